import pytest

from tidal.spec import SpecError, default_name, validate_spec


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
