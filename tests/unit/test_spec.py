import pytest

from tidal.spec import (
    DURATION_FIELDS,
    FUNCTION_LEVEL_FIELDS,
    SpecError,
    default_name,
    parse_duration,
    validate_spec,
)
from tidal.store.models import revision_digest


def test_defaults_a_user_expects() -> None:
    spec = validate_spec({"name": "embed"})
    assert (spec.memory, spec.cpu, spec.gpu, spec.timeout, spec.concurrency) == (512, 1.0, 0, 60.0, 1)
    assert (spec.min_instances, spec.max_instances, spec.public, spec.env) == (0, 10, False, {})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "x", "memory": 10}, "spec.memory: Input should be greater than or equal to 64"),
        ({"name": "x", "timeout": 0}, "spec.timeout: Input should be greater than 0"),
        ({"name": "Bad Name"}, "spec.name: Value error, must start with a lowercase letter"),
        ({"name": "x", "gpus": 1}, "spec.gpus: Extra inputs are not permitted"),
        ({"name": "x", "env": {"1BAD": "v"}}, "invalid environment variable name(s): 1BAD"),
        (
            {"name": "x", "min_instances": 3, "max_instances": 1},
            "min_instances (3) is above max_instances (1)",
        ),
        ({"memory": 128}, "spec.name: Field required"),
    ],
)
def test_invalid_specs_name_the_field(raw: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as error:
        validate_spec(raw)
    assert message in str(error.value)


def test_default_names() -> None:
    assert default_name("MyEmbedder") == "my_embedder"
    assert default_name("echo") == "echo"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("90", 90.0),
        (" 1.5m ", 90.0),
        ("0s", 0.0),
    ],
)
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "2 days", "1w", "-1s", "s", "2ss"])
def test_a_bad_duration_says_what_a_good_one_is(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration: give seconds \(90\) or a number and a unit"):
        parse_duration(text)


def test_every_seconds_field_takes_a_duration() -> None:
    spec = validate_spec(
        {
            "name": "x",
            "timeout": "2m",
            "stable_window": "90",
            "panic_window": "1500ms",
            "scale_down_delay": 5,
            "scale_to_zero_after": "1h",
        }
    )
    assert (spec.timeout, spec.stable_window, spec.panic_window) == (120.0, 90.0, 1.5)
    assert (spec.scale_down_delay, spec.scale_to_zero_after) == (5.0, 3600.0)
    durations = ["max_event_age", "panic_window", "scale_down_delay", "scale_to_zero_after", "stable_window",
                 "timeout"]  # fmt: skip
    assert sorted(DURATION_FIELDS) == durations
    assert spec.model_dump(mode="json")["timeout"] == 120.0  # stored as seconds, whatever was written


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "spec.timeout: Value error, 'soon' is not a duration"),
        (True, "spec.timeout: Value error, a duration is a number of seconds or a string like 2s"),
        ("2h", "spec.timeout: Input should be less than or equal to 3600"),
    ],
)
def test_a_bad_duration_in_a_spec_names_the_field(value: object, message: str) -> None:
    with pytest.raises(SpecError) as error:
        validate_spec({"name": "x", "timeout": value})
    assert message in str(error.value)


def test_public_is_function_level_and_makes_no_new_revision() -> None:
    assert sorted(FUNCTION_LEVEL_FIELDS) == [
        "cors", "keep_alive", "max_event_age", "on_failure", "on_success", "public", "retries", "routes",
        "sticky_key", "triggers",
    ]  # fmt: skip
    private = validate_spec({"name": "x", "memory": 1024, "timeout": "30s"})
    public = validate_spec({"name": "x", "memory": 1024, "timeout": "30s", "public": True})
    assert private.revision_fields() == public.revision_fields()  # same digest: no new revision
    assert "public" not in public.revision_fields()
    jobs = {"retries": 2, "max_event_age": 21600.0, "on_success": None, "on_failure": None, "triggers": []}
    jobs |= {"routes": [], "cors": {}}  # HTTP routes and CORS (tidal.routing)
    assert (private.function_settings(), public.function_settings()) == (
        {"public": False, "sticky_key": None, "keep_alive": None, **jobs},
        {"public": True, "sticky_key": None, "keep_alive": None, **jobs},
    )
    assert public.revision_fields()["timeout"] == 30.0 and public.revision_fields()["memory"] == 1024


def test_the_two_halves_make_the_whole_spec() -> None:
    spec = validate_spec({"name": "x", "env": {"A": "1"}, "public": True})
    whole = {**spec.revision_fields(), **spec.function_settings()}
    assert whole == spec.model_dump(mode="json")
    assert validate_spec(whole) == spec  # a stored revision + function settings revalidate to the same spec


def test_a_field_at_its_default_leaves_the_revision_digest_alone() -> None:
    """A release that adds a field (with a default) must not make a new revision of unchanged code."""
    older = {"name": "x", "memory": 256}  # as a revision stored before `batch` and `gpu` existed
    newer = validate_spec(older).revision_fields()  # every field, at its default where not given
    assert revision_digest("c", "m", "f", False, "native", older) == revision_digest(
        "c", "m", "f", False, "native", newer
    )
    batched = validate_spec({**older, "batch": {"max_size": 8}}).revision_fields()
    assert revision_digest("c", "m", "f", False, "native", batched) != revision_digest(
        "c", "m", "f", False, "native", newer
    )
