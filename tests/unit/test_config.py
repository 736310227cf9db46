"""busylamp.presence.config: parsers, source-named errors, file keys, cross-field checks (which
source wins, flag > env > file > default, is click's: tests/integration/test_cli.py)."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from busylamp.presence.config import (
    FIELDS,
    Address,
    ConfigError,
    Listen,
    RunConfig,
    default_node_id,
    load_config,
    normalize_file_keys,
)


def test_defaults_match_the_documented_ones():
    config = load_config({}, hostname="pbx1.example.com")
    assert config.role == "all"
    assert config.sip == [Listen("udp", "0.0.0.0", 5065), Listen("tcp", "0.0.0.0", 5065)]
    assert config.http == Address("127.0.0.1", 8080)
    assert config.esl == ["ClueCon@127.0.0.1:8021"]
    assert config.bus == "memory" and config.topic == "presence"
    assert config.node_id == "pbx1-5065"
    assert config.channel == "pbx1-5065#ephemeral"
    assert (config.min_expires, config.max_expires, config.default_expires) == (60, 3600, None)
    assert (config.t1, config.t2, config.timer_f) == (0.5, 4.0, 32.0)
    assert config.shutdown == "terminate" and config.shutdown_notify_rate == 500
    assert config.status_interval == 60.0 and config.pickup_prefix == "**"
    assert config.nsq_output_buffer_timeout == 0.05


def test_every_field_is_documented_for_the_flag_table():
    for f in fields(RunConfig):
        meta = f.metadata
        assert meta["help"], f.name
        assert meta["env"] == "BUSYLAMP_" + f.name.upper()
        assert meta["flag"] == "--" + f.name.replace("_", "-")


def test_error_message_names_the_flag_and_the_accepted_form():
    with pytest.raises(ConfigError) as err:
        load_config({"sip": ["udp:foo"]})
    assert str(err.value) == 'invalid --sip "udp:foo": expected udp:HOST:PORT or tcp:HOST:PORT'
    assert err.value.key == "--sip"


@pytest.mark.parametrize(("name", "raw", "accepted"), [
    ("role", "both", "all, bridge or presence"),
    ("http", "localhost", '"off"'),
    ("esl", "@127.0.0.1:8021", "PASSWORD@HOST:PORT"),
    ("max_in_flight", "0", "integer >= 1"),
    ("t1", "-1", "number of seconds > 0"),
    ("t1", "nan", "number of seconds > 0"),
    ("nsq_output_buffer_timeout", "0.01", "number of seconds >= 0.025"),
    ("trusted", "10.0.0.0/33", "CIDR"),
    ("domain_alias", "noequals", "ALIAS=DOMAIN"),
    ("topic", "bad topic", "NSQ topic"),
    ("cross_domain", "maybe", "true or false"),
    ("peer", "ftp://x:1", "http://HOST:PORT"),
    ("sip", "udp:::1:5060", "brackets"),
    ("shed_backlog", "1.5", "number from 0 to 1"),
    ("shed_backlog", "nan", "number from 0 to 1"),
])
def test_bad_values_are_refused_with_the_accepted_form(name, raw, accepted):
    value = [raw] if FIELDS[name].metadata["multiple"] else raw
    with pytest.raises(ConfigError) as err:
        load_config({name: value})
    assert FIELDS[name].metadata["flag"] in str(err.value)
    assert accepted in str(err.value)


def test_parsed_values():
    config = load_config({
        "sip": ["udp:[::1]:5070", "TCP:127.0.0.1:5071"], "http": "off", "esl": ["127.0.0.1:8021"],
        "trusted": ["10.1.2.3/8"], "domain_alias": ["Alias.example=Example.com"],
        "cross_domain": True, "lookupd": ["127.0.0.1:4161"], "bus": "nsq",
        "advertise": "203.0.113.5:5060", "shed_backlog": "0.25",
    }, hostname="h")
    assert config.sip == [Listen("udp", "::1", 5070), Listen("tcp", "127.0.0.1", 5071)]
    assert str(config.sip[0]) == "udp:[::1]:5070"
    assert config.http is None
    assert config.esl == ["ClueCon@127.0.0.1:8021"]
    assert config.trusted == [ipaddress.ip_network("10.0.0.0/8")]
    assert config.domain_alias == {"alias.example": "example.com"}
    assert config.cross_domain is True
    assert config.lookupd == ["http://127.0.0.1:4161"]
    assert config.advertise == Address("203.0.113.5", 5060)
    assert config.node_id == "h-5070"
    assert config.shed_backlog == 0.25


def test_lists_are_arrays_or_one_comma_separated_string():
    config = load_config({"sip": "udp:127.0.0.1:5061, tcp:127.0.0.1:5062,",
                          "esl": ("a@127.0.0.1:1", "b@127.0.0.1:2")})
    assert [s.port for s in config.sip] == [5061, 5062]
    assert config.esl == ["a@127.0.0.1:1", "b@127.0.0.1:2"]


def test_errors_name_the_source_the_label_gives():
    with pytest.raises(ConfigError, match=r'^invalid BUSYLAMP_T2 "x": expected'):
        load_config({"t2": "x"}, labels={"t2": "BUSYLAMP_T2"})
    with pytest.raises(ConfigError, match=r'^invalid t2 in my.toml "x": expected'):
        load_config({"t2": "x"}, labels={"t2": "t2 in my.toml"})
    with pytest.raises(ConfigError, match="a single value"):
        load_config({"t2": [1]})


def test_file_keys_accept_dashes_and_refuse_unknown_names():
    assert normalize_file_keys({"max-in-flight": 5}, "f.toml") == {"max_in_flight": 5}
    assert normalize_file_keys({"esl": "a@h:1,b@h:2", "peer": 7}, "f.toml") == {
        "esl": ["a@h:1", "b@h:2"], "peer": [7]}
    with pytest.raises(ConfigError, match='key "colour" in f.toml'):
        normalize_file_keys({"colour": "red"}, "f.toml")


@pytest.mark.parametrize(("flags", "flag"), [
    ({"bus": "nsq"}, "--nsqd"),
    ({"default_expires": "30"}, "--default-expires"),
    ({"t1": "5", "t2": "4"}, "--t2"),
    ({"role": "bridge"}, "--bus"),
    ({"http_token": " "}, "--http-token"),
    ({"sip": []}, "--sip"),
])
def test_cross_field_rules(flags, flag):
    with pytest.raises(ConfigError) as err:
        load_config(flags)
    assert flag in str(err.value)


def test_node_id_is_safe_for_nsq_channel_names():
    assert default_node_id("my host!.lan", 5065) == "my-host--5065"
    assert len(default_node_id("x" * 200, 5065) + "#ephemeral") <= 64
    config = load_config({"node_id": "edge-a"})
    assert config.channel == "edge-a#ephemeral"
    with pytest.raises(ConfigError, match="--node-id"):
        load_config({"node_id": "bad id"})


def test_example_config_file_parses_and_lists_every_option():
    path = Path(__file__).resolve().parents[2] / "contrib" / "busylamp.example.toml"
    text = path.read_text()
    values = normalize_file_keys(tomllib.loads(text), str(path))
    config = load_config(values, hostname="h")
    assert config.role == "all" and config.http == Address("127.0.0.1", 8080)
    for name in FIELDS:
        assert f"{name} = " in text, name
