"""config.load: typed settings from the environment, one clear line per mistake."""

import pytest

import config
from config import ConfigError


def test_defaults():
    s = config.load({"PLIVO_AUTH_TOKEN": "t"})
    assert s["PLIVO_AUTH_TOKENS"] == ("t",)
    assert s["RULES_PATH"] == "rules.yaml" and s["MAX_CONTENT_LENGTH"] == 65536
    assert s["TRUSTED_PROXIES"] == 0 and s["VERIFY_SIGNATURES"] is True
    assert s["PUBLIC_URL"] is None and s["PLIVO_API_URL"] == "https://api.plivo.com"
    assert (s["LOG_LEVEL"], s["LOG_FORMAT"]) == ("INFO", "json")


def test_several_tokens():
    assert config.load({"PLIVO_AUTH_TOKEN": " a, b ,,c "})["PLIVO_AUTH_TOKENS"] == ("a", "b", "c")


def test_missing_token_names_the_variable():
    with pytest.raises(ConfigError) as exc:
        config.load({})
    assert str(exc.value).startswith("PLIVO_AUTH_TOKEN is not set")
    assert "\n" not in str(exc.value)


def test_token_not_needed_when_signatures_are_off():
    assert config.load({"VERIFY_SIGNATURES": "false"})["VERIFY_SIGNATURES"] is False


def test_public_url_trailing_slash_dropped():
    assert config.load({"PLIVO_AUTH_TOKEN": "t", "PUBLIC_URL": "https://sms.example.com/"})["PUBLIC_URL"] == \
        "https://sms.example.com"


@pytest.mark.parametrize("name,value", [
    ("TRUSTED_PROXIES", "abc"), ("TRUSTED_PROXIES", "-1"), ("VERIFY_SIGNATURES", "maybe"),
    ("MAX_CONTENT_LENGTH", "0"), ("LOG_LEVEL", "LOUD"), ("LOG_FORMAT", "xml"),
    ("PUBLIC_URL", "sms.example.com"), ("PUBLIC_URL", "https://x/?a=1"), ("RULES_RELOAD_INTERVAL", "soon"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as exc:
        config.load({"PLIVO_AUTH_TOKEN": "t", name: value})
    assert str(exc.value).startswith(name) and "\n" not in str(exc.value)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "-1", "3601", "1e9", "soon",
                                   # a watcher that would look at the file thousands of times a second
                                   "0.0001", "1e-9", "0.099"])
def test_rules_reload_interval_refuses_what_would_silently_turn_reloading_off_or_spin(value):
    with pytest.raises(ConfigError) as exc:
        config.load({"PLIVO_AUTH_TOKEN": "t", "RULES_RELOAD_INTERVAL": value})
    assert str(exc.value) == (f"RULES_RELOAD_INTERVAL must be 0 (off) or a number of seconds from 0.1 to 3600, "
                              f"got {value!r}")


@pytest.mark.parametrize("value, expected", [("0", 0.0), ("0.0", 0.0), (" 0.1", 0.1), (" 0.2 ", 0.2), ("5", 5.0),
                                             ("3600", 3600.0)])
def test_rules_reload_interval_accepts_zero_for_off_and_up_to_an_hour(value, expected):
    assert config.load({"PLIVO_AUTH_TOKEN": "t", "RULES_RELOAD_INTERVAL": value})["RULES_RELOAD_INTERVAL"] == expected


def test_metrics_token_is_off_by_default_and_read_from_the_environment():
    assert config.load({"PLIVO_AUTH_TOKEN": "t"})["METRICS_TOKEN"] is None
    assert config.load({"PLIVO_AUTH_TOKEN": "t", "METRICS_TOKEN": "  "})["METRICS_TOKEN"] is None
    assert config.load({"PLIVO_AUTH_TOKEN": "t", "METRICS_TOKEN": "m1"})["METRICS_TOKEN"] == "m1"


@pytest.mark.parametrize("name", config.SECRETS)
def test_a_secret_may_be_given_as_a_file_but_not_twice(tmp_path, name):
    secret = tmp_path / "secret"
    value = "sqlite:////srv/x.sqlite3" if name == "DATABASE_URL" else "s3cret"
    secret.write_text(value + "\n", encoding="utf-8")   # as `echo` and editors write it
    base = {} if name == "PLIVO_AUTH_TOKEN" else {"PLIVO_AUTH_TOKEN": "t"}
    assert config.load({**base, f"{name}_FILE": str(secret)})[name] == value
    with pytest.raises(ConfigError) as exc:
        config.load({**base, name: "x", f"{name}_FILE": str(secret)})
    assert str(exc.value) == f"{name} and {name}_FILE are both set: give one of them"
    with pytest.raises(ConfigError) as exc:
        config.load({**base, f"{name}_FILE": str(tmp_path / "missing")})
    assert str(exc.value) == f"{name}_FILE: cannot read {tmp_path / 'missing'}: No such file or directory"


def test_replay_days_default_and_at_least_retention_days():
    s = config.load({"PLIVO_AUTH_TOKEN": "t"})
    assert (s["RETENTION_DAYS"], s["REPLAY_DAYS"]) == (90, 400)
    assert config.load({"PLIVO_AUTH_TOKEN": "t", "RETENTION_DAYS": "30", "REPLAY_DAYS": "30"})["REPLAY_DAYS"] == 30
    for value in ("abc", "0", "-5"):
        with pytest.raises(ConfigError) as exc:
            config.load({"PLIVO_AUTH_TOKEN": "t", "REPLAY_DAYS": value})
        assert str(exc.value).startswith("REPLAY_DAYS") and "\n" not in str(exc.value)
    # Not given, it is never shorter than a longer retention: 400, or RETENTION_DAYS if longer.
    assert config.load({"PLIVO_AUTH_TOKEN": "t", "RETENTION_DAYS": "3650"})["REPLAY_DAYS"] == 3650
    # Shorter than the retention, a pruned message's uuid and nonce would be forgotten first.
    with pytest.raises(ConfigError) as exc:
        config.load({"PLIVO_AUTH_TOKEN": "t", "RETENTION_DAYS": "90", "REPLAY_DAYS": "30"})
    assert str(exc.value) == ("REPLAY_DAYS must be at least RETENTION_DAYS (90), got '30': "
                              "a pruned message could be replayed")
