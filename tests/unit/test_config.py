"""Configuration: the integration sheet IT writes, and what it says when it is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from node.cli.main import EXIT_CONFIG, EXIT_OK, main
from node.config import load_config
from node.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_default_config_is_valid_and_listens_as_radnode_on_11112() -> None:
    config = load_config(REPO / "config" / "node.yaml", environ={})
    assert config.node.ae_title == "RADNODE"
    assert config.node.port == 11112
    assert config.storage.resolved_index_url().startswith("sqlite:///")
    assert config.sources, "the default config accepts senders from loopback"
    for source in config.sources:
        assert source.allows_address("127.0.0.1")
        assert not source.allows_address("10.1.2.3")


def test_a_bad_port_names_the_key_the_value_and_what_it_is(tmp_path: Path) -> None:
    path = write(tmp_path, {"node": {"port": 70000}})
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    text = str(err.value)
    assert "node.port = 70000" in text
    assert "less than or equal to 65535" in text
    assert "TCP port for DICOM" in text


def test_every_problem_is_listed_not_only_the_first(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "node": {"ae_title": "A" * 17, "listenr": 3},
            "sources": [{"name": "pacs", "ae_title": "PACS1", "hosts": ["banana"]}],
        },
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    text = str(err.value)
    assert "3 problems" in text
    assert "node.ae_title" in text and "at most 16 characters" in text
    assert "node.listenr: unknown key" in text
    assert "sources[0].hosts" in text and "'banana'" in text


def test_routes_must_name_configured_sources_and_destinations(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "sources": [{"name": "pacs", "ae_title": "PACS1"}],
            "routes": [{"name": "r1", "from": ["modality"], "model": "lung-nodules"}],
        },
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "routes[0].from names source 'modality'" in str(err.value)
    assert "['pacs']" in str(err.value)


def test_duplicate_source_ae_titles_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"sources": [{"name": "a", "ae_title": "PACS1"}, {"name": "b", "ae_title": "PACS1"}]},
    )
    with pytest.raises(ConfigError, match=r"sources\[1\]\.ae_title 'PACS1' is used twice"):
        load_config(path, environ={})


def test_study_quiet_time_shorter_than_series_quiet_time_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {"completion": {"series_quiet_seconds": 30, "study_quiet_seconds": 5}})
    with pytest.raises(ConfigError, match=r"study_quiet_seconds \(5\) is shorter"):
        load_config(path, environ={})


def test_environment_overrides_nested_keys_and_list_items(tmp_path: Path) -> None:
    path = write(tmp_path, {"sources": [{"name": "pacs", "ae_title": "PACS1"}]})
    config = load_config(
        path,
        environ={
            "RADNODE_NODE__PORT": "104",
            "RADNODE_NODE__HOST": "0.0.0.0",
            "RADNODE_SOURCES__0__AE_TITLE": "PACS2",
            "RADNODE_COMPLETION__SERIES_QUIET_SECONDS": "5",
            # Not configuration: these must be ignored, not rejected.
            "RADNODE_SHARED_DATA": "/somewhere",
            "RADNODE_CONFIG": "/etc/radnode.yaml",
        },
    )
    assert config.node.port == 104
    assert config.node.host == "0.0.0.0"
    assert config.sources[0].ae_title == "PACS2"
    assert config.completion.series_quiet_seconds == 5


def test_a_bad_environment_value_says_which_variable_set_it(tmp_path: Path) -> None:
    path = write(tmp_path, {})
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={"RADNODE_NODE__PORT": "0"})
    assert "node.port = 0" in str(err.value)
    assert "RADNODE_NODE__PORT" in str(err.value)


def test_an_environment_index_past_the_list_is_explained(tmp_path: Path) -> None:
    path = write(tmp_path, {"sources": [{"name": "pacs", "ae_title": "PACS1"}]})
    with pytest.raises(ConfigError, match="sources has 1 items, so '3' is not an index"):
        load_config(path, environ={"RADNODE_SOURCES__3__AE_TITLE": "X"})


def test_missing_file_and_broken_yaml_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml", environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("node:\n  port: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(broken, environ={})


def test_source_hosts_accept_addresses_cidrs_and_ipv4_mapped_ipv6(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"sources": [{"name": "pacs", "ae_title": "PACS1", "hosts": ["10.0.0.5", "10.1.0.0/16"]}]},
    )
    source = load_config(path, environ={}).sources[0]
    assert source.allows_address("10.0.0.5")
    assert source.allows_address("10.1.200.7")
    assert source.allows_address("::ffff:10.0.0.5")
    assert not source.allows_address("10.0.0.6")
    assert not source.allows_address("not-an-address")


def test_check_config_prints_a_summary_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["check-config", "--config", str(REPO / "config" / "node.yaml")])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert "AE RADNODE, listening on 127.0.0.1:11112" in out
    assert "calling AE STORESCU from 127.0.0.1/32" in out


def test_check_config_on_an_error_exits_2_and_names_key_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, {"node": {"port": "eleven"}})
    code = main(["check-config", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == EXIT_CONFIG
    assert "node.port = 'eleven'" in err
