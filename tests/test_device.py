"""Where training runs (run config `device`) and in what precision (`amp`): refused where it
cannot run, bit-identical to the code before device support on the CPU, state that leaves a
model as CPU arrays and loads onto the configured device. Tests that need CUDA skip, saying
so, on machines without it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

import client.app
from client.app import open_session, train_session
from client.state import read_state_files
from client.train import build_model, evaluate, model_device, scaled_step, train_epochs
from common.config import ConfigError, parse_run_config
from common.device import autocast, check_amp, default_gpus_per_client, resolve_device
from common.federation import load_client_data
from common.weighting import EqualWeighting
from tests.helpers import TINY, client_context, received_arrays

GOLDEN = Path(__file__).parent / "data" / "bare_loop_cpu.json"
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: this machine has no CUDA device"
)


# --- bad input ---


def test_cuda_on_a_machine_without_it_is_refused_naming_the_key_and_what_there_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name in ("cuda", "cuda:0", "mps"):
        with pytest.raises(ConfigError, match=rf"'device' = '{name}' .*available here: \['cpu'\]"):
            resolve_device(name)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_index_past_the_last_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"'cuda:2' but this node has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


def test_a_client_asked_for_cuda_without_it_refuses_at_its_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The ClientApp resolves `device` on its own node, before it loads any state."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    context = client_context(tmp_path, RecordDict(), device="cuda")
    with pytest.raises(ConfigError, match=r"'device' = 'cuda' but CUDA is not available"):
        open_session(context, received_arrays())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"device": "gpu"}, r"'device' = 'gpu' is not valid; valid: 'auto', 'cpu', 'cuda'"),
        ({"device": "cuda:x"}, r"'device' = 'cuda:x' is not valid"),
        ({"amp": "fp8"}, r"'amp' = 'fp8' is not valid; valid values: \['none', 'bf16', 'fp16'\]"),
        ({"amp": "fp16", "device": "cpu"}, r"'amp' = 'fp16' needs CUDA"),
        ({"amp": "bf16", "device": "mps"}, r"'amp' = 'bf16' is not supported on device 'mps'"),
        ({"amp": "bf16", "privacy": "dp-sgd"}, r"'amp' = 'bf16' cannot run under privacy"),
        ({"amp": "fp16", "weighting": "pcgrad"}, r"weighting 'pcgrad'.*valid with fp16: \["),
        ({"amp": "fp16", "weighting": "uw"}, r"weighting 'uw'"),
        ({"tracking": "wandb"}, r"'tracking' = 'wandb' is not valid"),
    ],
)
def test_device_and_amp_settings_that_cannot_run_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_run_config(overrides)


def test_a_checkpoint_resumes_on_another_device_but_not_in_another_precision() -> None:
    """The digest that a resume must match: state is device-independent, precision is not."""
    base = parse_run_config({}).digest()
    assert parse_run_config({"device": "cpu"}).digest() == base
    assert parse_run_config({"tracking": "tensorboard"}).digest() == base
    assert parse_run_config({"amp": "bf16"}).digest() != base


def test_fp16_is_refused_where_auto_resolves_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = parse_run_config({"amp": "fp16"})  # device 'auto': only the node knows
    with pytest.raises(ConfigError, match=r"'amp' = 'fp16' does not run on device 'cpu'"):
        check_amp(cfg.amp, resolve_device(cfg.device))
    check_amp("bf16", torch.device("cpu"))


def test_gpus_per_client_is_zero_without_cuda_and_shares_the_gpus_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_gpus_per_client("auto", num_clients=6) == 0.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_gpus_per_client("auto", num_clients=6) == pytest.approx(1 / 6)
    assert default_gpus_per_client("auto", num_clients=100, cpus_per_client=2) == 1 / 8
    assert default_gpus_per_client("cpu", num_clients=6) == 0.0


# --- the CPU stays bit-reproducible ---


def bare_loop_metrics() -> dict[str, dict]:
    """What `GOLDEN` holds, computed by today's code with device = 'cpu'."""
    from experiments.bare_loop import run_bare

    golden = json.loads(GOLDEN.read_text())
    out = {}
    for name, case in golden["cases"].items():
        cfg = parse_run_config({**golden["base"], **case["overrides"], "device": "cpu"})
        out[name] = run_bare(cfg)["rounds"][-1]["per_client"]
    return out


def test_cpu_reproduces_the_metrics_of_the_code_before_device_support_exactly() -> None:
    """Four tiny bare-loop runs (MLP and CNN; ew, dwa, mgda, uw; fedper and fedrep): every
    final metric equals, to the last bit, what the code computed before training moved to a
    configurable device (the file says which torch computed it)."""
    golden = json.loads(GOLDEN.read_text())
    assert golden["torch"] == torch.__version__, "golden values come from another torch build"
    got = bare_loop_metrics()
    for name, case in golden["cases"].items():
        assert got[name] == case["per_client"], name


# --- mixed precision ---


def _tiny_client(**overrides: object):
    cfg = parse_run_config({**TINY, **overrides})
    data = load_client_data(cfg, 0, 3)
    model = build_model(cfg, data.tasks, data.input_shape)
    return cfg, data, model


def test_bf16_runs_the_training_forward_in_bf16_and_keeps_weights_in_fp32() -> None:
    cfg, data, model = _tiny_client(amp="bf16", device="cpu")
    seen = []
    hook = model.encoder.blocks[0][0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    stats = train_epochs(
        model,
        data.train,
        EqualWeighting(data.task_names),
        cfg,
        epochs=1,
        generator=torch.Generator().manual_seed(0),
    )
    assert seen and set(seen) == {torch.bfloat16}
    assert np.isfinite(stats.loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    evaluate(model, data.test, data.tasks)  # evaluation runs in float32
    hook.remove()
    assert seen[-1] == torch.float32


def test_fp16_loss_scaling_is_undone_before_the_hook_and_the_step() -> None:
    """The scaled step (fp16's, run here in fp32 on the CPU): backward sees the loss scaled,
    the weighting sees the true loss values, the gradient hook (proximal terms, clipping) and
    the step see the unscaled gradients, and the weights move as an unscaled step moves them."""
    cfg, data, model = _tiny_client()
    twin = build_model(cfg, data.tasks, data.input_shape)
    x = torch.from_numpy(data.train.x[:16])
    y = {t: torch.from_numpy(v[:16]) for t, v in data.train.y.items()}
    seen: list[float] = []
    after_backward: list[torch.Tensor] = []

    class Recording(EqualWeighting):
        def backward(self, losses, shared_params):
            seen.extend(float(v) for v in losses.values())
            used = super().backward(losses, shared_params)
            after_backward.append(shared_params[0].grad.clone())
            return used

    def losses_of(m):
        out = m(x)
        return {t: m.tasks[t].loss(out[t], y[t]) for t in m.tasks}

    scale = 2.0**12
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    plain_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    scaled_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = losses_of(twin)
    EqualWeighting(data.task_names).backward(expected, list(twin.encoder.parameters()))
    twin_grad = next(twin.encoder.parameters()).grad.clone()
    plain_opt.step()
    in_hook: list[torch.Tensor] = []
    scaled_step(
        scaler,
        scaled_opt,
        Recording(data.task_names),
        losses_of(model),
        None,
        list(model.encoder.parameters()),
        lambda: in_hook.append(next(model.encoder.parameters()).grad.clone()),
        torch.device("cpu"),
    )
    assert seen == [float(v) for v in expected.values()]
    torch.testing.assert_close(after_backward[0], twin_grad * scale, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(in_hook[0], twin_grad, rtol=1e-5, atol=1e-9)
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


# --- state is device-independent ---


def test_private_state_leaves_as_cpu_arrays_and_loads_onto_the_configured_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved by one session, restored by the next on another device ('meta' stands in for a
    GPU here): the restored model lives on the configured device, not where the state came
    from."""
    state = RecordDict()
    session = open_session(client_context(tmp_path, state, algorithm="ditto"), received_arrays())
    reply = train_session(session, 1, 0.0)
    saved, _ = read_state_files(tmp_path / "default" / "client-0")
    assert saved and all(type(v) is np.ndarray for v in saved.values())
    assert all(type(v.numpy()) is np.ndarray for v in reply["arrays"].values())

    monkeypatch.setattr(client.app, "resolve_device", lambda name: torch.device("meta"))
    for memory in (state, RecordDict()):  # from the client's memory, then from its disk
        again = open_session(client_context(tmp_path, memory, algorithm="ditto"), received_arrays())
        for model in (again.model, again.personal):
            assert {t.device.type for t in model.state_dict().values()} == {"meta"}


# --- on a GPU ---


@needs_cuda
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_training_and_evaluation_run_on_cuda(amp: str) -> None:
    cfg, data, _ = _tiny_client(amp=amp, device="cuda", encoder="resnet")
    model = build_model(cfg, data.tasks, data.input_shape, device=resolve_device(cfg.device))
    assert model_device(model).type == "cuda"
    stats = train_epochs(
        model,
        data.train,
        EqualWeighting(data.task_names),
        cfg,
        epochs=1,
        generator=torch.Generator().manual_seed(0),
    )
    assert np.isfinite(stats.loss)
    results = evaluate(model, data.test, data.tasks)
    assert set(results) == set(data.task_names)


@needs_cuda
def test_state_written_on_cuda_loads_on_the_cpu(tmp_path: Path) -> None:
    state = RecordDict()
    gpu = open_session(
        client_context(tmp_path, state, device="cuda"), received_arrays(device="cuda")
    )
    assert model_device(gpu.model).type == "cuda"
    train_session(gpu, 1, 0.0)
    arrays = gpu.private_arrays()
    assert all(type(v) is np.ndarray for v in arrays.values())
    cpu = open_session(client_context(tmp_path, RecordDict(), device="cpu"), received_arrays())
    assert model_device(cpu.model).type == "cpu"
    for key, value in cpu.private_arrays().items():
        np.testing.assert_array_equal(value, arrays[key], err_msg=key)


@needs_cuda
def test_dp_sgd_runs_on_cuda() -> None:
    from client.dp import dp_round
    from client.train import build_weighting

    cfg, data, _ = _tiny_client(
        device="cuda", privacy="dp-sgd", **{"dp-noise-multiplier": 1.0, "dp-epsilon": 50.0}
    )
    model = build_model(cfg, data.tasks, data.input_shape, device="cuda")
    weighting = build_weighting(cfg, data.task_names, data.task_names)
    before = [p.detach().clone() for p in model.parameters()]
    stats, history, eps = dp_round(model, data, weighting, cfg, 1, [])
    assert eps > 0 and history and np.isfinite(stats.loss)
    assert any(not p.equal(b) for p, b in zip(model.parameters(), before, strict=True))


@needs_cuda
def test_autocast_on_cuda_uses_the_configured_dtype() -> None:
    layer = torch.nn.Linear(4, 4).cuda()
    for amp, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(amp, torch.device("cuda")):
            assert layer(torch.randn(2, 4, device="cuda")).dtype == dtype


if __name__ == "__main__":
    # Regenerate the golden values (only when a change is meant to alter CPU training).
    golden = json.loads(GOLDEN.read_text())
    for name, metrics in bare_loop_metrics().items():
        golden["cases"][name]["per_client"] = metrics
    golden["torch"] = torch.__version__
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    sys.exit(0)


# --- the launcher ---


def test_the_launcher_refuses_a_device_this_machine_lacks_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from deploy import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "run_simulation", lambda *a, **k: pytest.fail("a run started"))
    assert cli.main(["-c", "device=cuda", "--quiet"]) == 2
    assert "'device' = 'cuda' but CUDA is not available" in capsys.readouterr().err


def test_the_launcher_gives_each_client_a_gpu_share_in_the_federation_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deploy.simulation import federation_config, gpus_for

    cfg = parse_run_config({"num-clients": 4})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpus_for(cfg, 1, None) == 0.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert gpus_for(cfg, 1, None) == 0.25
    assert gpus_for(cfg, 1, 0.5) == 0.5
    assert "client-resources-num-gpus=0.25" in federation_config(4, 1, gpus_for(cfg, 1, None))
