"""The xdist scheduling table in conftest names real test files and keeps each module whole."""

from pathlib import Path

from conftest import BIG_MODEL_FILES, BIG_MODELS_UNIT, PER_TEST_FILES, unit_priority, xdist_unit

TESTS = Path(__file__).parent


def test_scheduling_tables_name_existing_test_files():
    missing = [name for name in (*BIG_MODEL_FILES, *PER_TEST_FILES) if not (TESTS / name).is_file()]
    assert not missing, f"renamed or removed test files still listed in tests/conftest.py: {missing}"


def test_units_keep_modules_whole_and_big_models_together():
    assert xdist_unit("tests/test_reinforce.py::test_a") == xdist_unit("tests/test_reinforce.py::test_b[x]")
    assert xdist_unit("tests/test_reinforce.py::test_a") != xdist_unit("tests/test_train_cli.py::test_a")
    assert (
        xdist_unit("tests/test_equivalence.py::t")
        == xdist_unit("tests/test_reparam.py::t")
        == BIG_MODELS_UNIT
    )
    spread = [f"tests/{PER_TEST_FILES[0]}::test_a[1]", f"tests/{PER_TEST_FILES[0]}::test_a[2]"]
    assert xdist_unit(spread[0]) != xdist_unit(spread[1])
    # The default tier's models are small: every module is its own unit there.
    assert xdist_unit("tests/test_equivalence.py::t", slow_tier=False) == "tests/test_equivalence.py"
    assert xdist_unit(spread[0], slow_tier=False) == xdist_unit(spread[1], slow_tier=False)


def test_the_longest_units_are_handed_out_first():
    units = ["tests/test_a.py", f"tests/{PER_TEST_FILES[0]}::test_x[1]", BIG_MODELS_UNIT, "tests/test_b.py"]
    ordered = sorted(units, key=unit_priority)
    assert ordered[:2] == [BIG_MODELS_UNIT, f"tests/{PER_TEST_FILES[0]}::test_x[1]"]
    assert ordered[2:] == ["tests/test_a.py", "tests/test_b.py"]  # stable: xdist's order among modules
