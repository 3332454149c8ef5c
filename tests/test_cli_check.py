"""`mobileclip2 check` and `mobileclip2 info`: the smoke test users run after installing."""

from __future__ import annotations

import re

from mobileclip2 import cli


def test_check_builds_and_runs_a_model(capsys):
    assert cli.main(["check", "MobileCLIP2-S0", "MobileCLIP-S0"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith("MobileCLIP")}
    assert set(rows) == {"MobileCLIP2-S0", "MobileCLIP-S0"}
    assert re.search(r"MobileCLIP2-S0\s+native\s+11\.4M \+ 63\.4M\s+[\d.]+s\s+ok", rows["MobileCLIP2-S0"])
    assert re.search(r"MobileCLIP-S0\s+backfilled\s+11\.4M \+ 42\.4M\s+[\d.]+s\s+ok", rows["MobileCLIP-S0"])
    assert out.strip().endswith("2 passed, 0 failed")


def test_check_lists_the_features_and_strict_fails_on_a_skipped_one(capsys, monkeypatch):
    from mobileclip2 import plugin

    assert cli.main(["check", "MobileCLIP2-S0"]) == 0
    out = capsys.readouterr().out
    for feature in plugin.FEATURES:
        assert re.search(rf"^{re.escape(feature.name)}\s+ok$", out, re.MULTILINE), feature.name
    assert re.search(r"^training hooks \(python -m mobileclip2.train\)\s+ok \(", out, re.MULTILINE)

    state = plugin.registration_state()[1]
    monkeypatch.setitem(state.features, "CoCa sampling", "AttributeError: gone upstream")
    assert cli.main(["check", "MobileCLIP2-S0"]) == 0  # the models work: a reduced install, not a broken one
    out = capsys.readouterr().out
    assert "CoCa sampling" in out and "skipped: AttributeError: gone upstream" in out
    assert out.strip().endswith("1 passed, 0 failed; 1 feature skipped")
    assert cli.main(["check", "--strict", "MobileCLIP2-S0"]) == 1


def test_check_fails_loudly_and_keeps_going(capsys):
    assert cli.main(["check", "MobileCLIP2-SO", "MobileCLIP2-S0"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: UnknownModelError: Unknown model name 'MobileCLIP2-SO'" in out
    assert re.search(r"MobileCLIP2-S0\s+native .* ok", out)
    assert out.strip().endswith("1 passed, 1 failed")


def test_info_shows_towers_preprocessing_and_hub_files(capsys):
    assert cli.main(["info", "MobileCLIP-S0"]) == 0
    out = capsys.readouterr().out
    assert "timm fastvit_mci0" in out and "text tower  : mobileclip_mct" in out
    assert "11.4M image + 42.4M text" in out
    assert "hub file      : apple/MobileCLIP-S0/mobileclip_s0.pt" in out
    assert "mean / std    : (0.0, 0.0, 0.0) / (1.0, 1.0, 1.0)" in out
