"""Plot titles name the attack that produced them; a single eps is drawn as bars, several as curves."""

import pytest

from diffusers_agdm.evaluation import plots


def _report(eps_values, attacks):
    point = {"all": {"mean": 0.5, "std": None}, "majority": {"mean": 0.75, "std": None}}
    return {"settings": {"threat_model": {"norm": "Linf", "eps": eps_values[-1]}, "rescore_runs": 5,
                         "attacks": attacks},
            "defenses": {"undefended": {"title": "undefended"}, "latent": {"title": "latent guidance (AGDM)"}},
            "eps_curve": {d: [{"eps": e, **point} for e in [0.0, *eps_values]] for d in ("undefended", "latent")}}


@pytest.mark.parametrize("eps_values, attacks, title, kind", [
    ([0.3], ["apgd-guidance", "apgd"], "Accuracy under APGD-EOT (exact gradient), Linf eps 0.3", "bars"),
    ([0.1, 0.3], ["pgd"], "Robust accuracy under PGD-EOT (exact gradient)", "lines"),
])
def test_eps_plot_names_its_attack_and_draws_one_eps_as_bars(tmp_path, monkeypatch, eps_values, attacks, title,
                                                               kind):
    drawn = {}
    from matplotlib.axes import Axes

    for method in ("bar", "errorbar", "set_title"):
        original = getattr(Axes, method)

        def record(self, *args, _name=method, _original=original, **kwargs):
            drawn.setdefault(_name, []).append(args)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Axes, method, record)
    plots.plot_accuracy_vs_eps(_report(eps_values, attacks), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").is_file()
    assert drawn["set_title"][0][0].startswith(title)
    assert ("bar" in drawn) == (kind == "bars") and "errorbar" in drawn  # bars carry their error bars too
