"""busylamp benchmark harness: drives a presence server (busylamp or Kamailio) and reports."""
