"""What configs and checkpoints of an older vsmd need to work with this one.

vsmd 0.1 ran AGM as ``process: agm`` of the VSMD task classes (ToyVSMD, ImageVSMD, TimeSeriesVSMD); since 0.2 AGM is
its own family (ToyAGM, ImageAGM, TimeSeriesAGM) with only the options that apply to it. A checkpoint of 0.1 loads
into the AGM class as it is (the weights and buffers have the same names): :func:`upgrade_hparams` maps its saved
class and options. A 0.1 config is refused with the two edits it needs (:func:`check_legacy_config`).
"""

from __future__ import annotations

from vsmd.models import PhaseSpaceModule
from vsmd.settings import policy_for


def _agm_twin(class_path: str | None, hparams: dict) -> str | None:
    """The AGM class of a 0.1 VSMD task class that ran process agm (None when it is not one)."""
    if not class_path or not class_path.endswith("VSMD") or hparams.get("process") != "agm":
        return None
    return class_path[: -len("VSMD")] + "AGM"


def upgrade_hparams(class_path: str | None, hparams: dict) -> tuple[str | None, dict]:
    """A checkpoint's (class_path, hyperparameters) as this vsmd names them: a 0.1 AGM checkpoint becomes its AGM
    class with the options that class has."""
    twin = _agm_twin(class_path, hparams)
    if twin is None:
        return class_path, hparams
    names = set(policy_for(twin, PhaseSpaceModule).names())
    return twin, {k: v for k, v in hparams.items() if k in names}


def check_legacy_config(path: str, config: object) -> None:
    """Refuse a 0.1 config that runs AGM as process agm of a VSMD class, saying what to change."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("init_args"), dict):
        return
    twin = _agm_twin(str(model.get("class_path") or ""), model["init_args"])
    if twin is None:
        return
    short = twin.rsplit(".", 1)[-1]
    raise ValueError(f"the config file {path} was written for vsmd 0.1, where AGM was 'process: agm' of "
                     f"{model['class_path']}; AGM is now its own model class. In {path} set 'class_path: {twin}' "
                     "and delete 'process: agm' and any options AGM does not have (beta, beta_schedule, beta_min, "
                     "gamma, damping, init_velocity, v0_var, t_eps, parametrisation, rotation, rho_init*, sa_*, "
                     f"zb_mode, zeta, ei_t_stop), as configs/spiral8y_agm.yaml shows; `vsmd fit --model {short} "
                     "--print_config` lists the options.")
