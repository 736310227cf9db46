"""bench.heapstats: the allocator dump it reads from inside a node, and its summary."""

from bench import heapstats


def test_the_summary_reads_the_totals_of_this_interpreters_dump() -> None:
    text = heapstats._pymalloc()
    summary = heapstats._summary(text)
    assert set(summary) == {"arenas", "in_use", "free_blocks", "empty_pools_bytes"}
    assert summary["arenas"] >= 1 and summary["in_use"] > 1_000_000  # the interpreter itself
    assert "class   size   num pools" in text


def test_the_summary_of_a_known_dump() -> None:
    text = ("# arenas allocated current         =                  219\n"
            "# bytes in allocated blocks        =          207,084,672\n"
            "# bytes in available blocks        =            6,782,608\n"
            "663 unused pools * 16384 bytes     =           10,862,592\n")
    assert heapstats._summary(text) == {"arenas": 219, "in_use": 207_084_672,
                                        "free_blocks": 6_782_608,
                                        "empty_pools_bytes": 10_862_592}


def test_the_c_heap_and_mappings_are_read() -> None:
    heap = heapstats._c_heap()
    assert heap["in_use"] > 0 and set(heap) == {"heap_bytes", "in_use", "free", "mmapped"}
    assert sum(heapstats._pss_by_mapping().values()) > 0

