"""The ``cascade`` command line: one entry point, one subcommand per job.

    cascade eval routerbench --models 11 --noise low --json runs/rb.json --plot runs/rb.png
    cascade eval routerbench --models 11 --estimators trained --json runs/rb_trained.json
    cascade validate models.yaml
    cascade plan models.yaml --nodes 1x8xH100      # what goes where, before anything starts
    cascade cluster-config models.yaml --target ray-up --cloud aws -o cluster.yaml   # or --target kuberay
    cascade models build --out .cache/tiny
    cascade up models.cpu.yaml --port 8000     # deploy the fleet on Ray Serve (outlives the command)
    cascade status / cascade down [--stop-ray]
    cascade calibrate models.cpu.yaml --prompts data.jsonl --budget 40%   # on the running fleet
    cascade demo                               # trained CPU fleet, calibrated, the cascade measured live
    cascade demo --tiny / --toy                # a few prompts with their routing traces

Bad input ends with exit code 2 and one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

# The shared benchmark folder sits beside the repository checkout (../shared/data/routerbench).
_DEFAULT_ROUTERBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "routerbench"
# Under runs/ (git-ignored), not calibration/: that is the package of the command's own code.
_DEFAULT_CALIBRATION = Path("runs") / "calibration"


def _unit_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _max_depth(text: str) -> int | None:
    """An int >= 1, or 'none' for no limit."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 or 'none' (no limit), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 or 'none' (no limit), got {text!r}")
    return value


def _finite_at_least_0(text: str, number: str, finite_number: str) -> float:
    """``text`` as a finite float >= 0, or argparse's error naming what was expected."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {number} >= 0, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected {finite_number} >= 0, got {text!r}")
    return value


def _uncertainty_scale(text: str) -> float | None:
    """'fit' (None: fitted on the validation rows) or a finite number >= 0."""
    if text.strip().lower() == "fit":
        return None
    return _finite_at_least_0(text, "'fit' or a number", "'fit' or a finite number")


def _margin_se(text: str) -> float:
    """A budget margin in standard errors: a finite number >= 0."""
    return _finite_at_least_0(text, "a number of standard errors", "a finite number of standard errors")


_MARGIN_HELP = ("fit each budget's lambda so that the validation mean cost plus SE standard errors of it stays "
                "within the budget: the budget's sampling error on few validation rows (default {default}; "
                "0: the paper's fit)")


def _build_parser() -> argparse.ArgumentParser:
    from routing import DEFAULT_BUDGET_MARGIN_SE

    parser = argparse.ArgumentParser(prog="cascade", description="cascade-serve: cascade routing for local LLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="offline evaluations of the routing policies")
    ev_sub = ev.add_subparsers(dest="benchmark", required=True)
    rb = ev_sub.add_parser(
        "routerbench",
        help="the paper's RouterBench protocol: AUC of every policy with simulated or trained estimators",
        description="Fit routing, threshold cascade, optimal cascade and cascade routing at every budget of "
        "the paper's grid on a validation split (5% by default; --test-size) and score them on the rest. With "
        "--estimators trained, the estimators learn from the *_train.csv rows and the validation/test split is "
        "of the *_test.csv rows.",
    )
    # Data
    rb.add_argument("--data", type=Path, default=None,
                    help="RouterBench CSV folder, CSV file or original .pkl (default: ../shared/data/routerbench)")
    rb.add_argument("--models", default=None,
                    help="the paper's model set (3, 5 or 11) or comma-separated model names (default: 11 on the "
                    "default data, every model of the file with --data)")
    rb.add_argument("--test-size", type=_unit_fraction, default=0.95,
                    help="share of the rows scored; the rest fit lambda, gamma and the uncertainty scale "
                    "(default 0.95, the paper's)")
    rb.add_argument("--estimators", choices=["simulated", "trained"], default="simulated",
                    help="simulated: ground truth plus noise (the paper's protocol); trained: classifiers on the "
                    "prompts and answers of the *_train.csv rows, evaluated on the *_test.csv rows "
                    "(default simulated)")
    rb.add_argument("--noise", default=None,
                    help="simulated estimators' noise: low, medium or high (default low); not for trained ones")
    # Method
    rb.add_argument("--seed", type=int, default=0,
                    help="seed of the estimator noise draw, or of the trained estimators' folds (default 0)")
    rb.add_argument("--max-depth", type=_max_depth, default=5,
                    help="cascade routing's max models per query: an int >= 1, or 'none' for no limit "
                    "(default 5, the paper's on RouterBench)")
    rb.add_argument("--uncertainty-scale", type=_uncertainty_scale, default=None, metavar="fit|FACTOR",
                    help="factor on the estimators' variances in E[max]: 'fit' chooses it on the validation rows "
                    "(default); a number >= 0 fixes it (1: as the estimators state it, 0: no uncertainty)")
    rb.add_argument("--budget-margin", type=_margin_se, default=DEFAULT_BUDGET_MARGIN_SE, metavar="SE",
                    help=_MARGIN_HELP.format(default=DEFAULT_BUDGET_MARGIN_SE))
    rb.add_argument("--calibration-shrinkage", default=None,
                    choices=["measurement", "empirical_bayes", "none", "pooled"],
                    help="simulated estimators' per-model calibration: measurement fits one signal scale and noise "
                    "variance for every model and derives each model's slope from its own quality variance, "
                    "empirical_bayes pulls each model's slope toward the pooled one by how noisy it is, none fits "
                    "each model alone, pooled gives every model one slope (default: the protocol's, measurement)")
    rb.add_argument("--strategy", choices=["per_step", "constant"], default="per_step",
                    help="lambda fitting: per-step search or one constant lambda (default per_step)")
    rb.add_argument("--per-segment", type=int, default=10, help="budgets per hull segment (default 10, the paper's)")
    rb.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for CIs (0 = none; default 500)")
    # Output
    rb.add_argument("--json", type=Path, default=None, help="write results as JSON to this path")
    rb.add_argument("--plot", type=Path, default=None, help="draw the quality-cost curves to this PNG")
    rb.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="worker processes (default: 2 or the CPU count if lower); results do not depend on it")
    rb.add_argument("--quiet", action="store_true", help="no progress bar")

    mo = sub.add_parser("models", help="the embedded CPU fleet's tiny models")
    mo_sub = mo.add_subparsers(dest="models_command", required=True)
    mb = mo_sub.add_parser("build", help="build the tiny Qwen2 models of models.cpu.yaml, or with --toy (--recall) "
                           "train the fleet of models.toy.yaml (models.recall.yaml) (deterministic, cached)")
    fleet_kind = mb.add_mutually_exclusive_group()
    fleet_kind.add_argument("--toy", action="store_true",
                            help="the toy fleet: four tiny models trained to add integers")
    fleet_kind.add_argument("--recall", action="store_true",
                            help="the recall fleet: three tiny models trained to recall birth years, each knowing "
                                 "more of them (what a model knows does not show in the question)")
    mb.add_argument("--out", type=Path, default=None,
                    help="folder (default .cache/tiny, .cache/toy with --toy, .cache/recall with --recall)")
    mb.add_argument("--eval", type=int, default=0,
                    help="with --toy or --recall: held-out prompts to evaluate each model on (default 0 = none)")
    mb.add_argument("--seed", type=int, default=0,
                    help="with --toy or --recall: seed of the held-out prompts (default 0)")
    mb.add_argument("--jobs", type=int, default=2,
                    help="with --toy or --recall: models trained at once, one core each (default 2)")

    va = sub.add_parser("validate", help="check a fleet file (models.yaml) and summarise it")
    va.add_argument("file", type=Path, nargs="?", default=Path("models.yaml"), help="fleet file (default models.yaml)")

    pl = sub.add_parser(
        "plan", help="a fleet file's placement plan: memory, GPUs and memory fraction per model, replicas on nodes",
        description="Per model: weights, KV cache for max_model_len x max_num_seqs, headroom, hence the GPUs of a "
        "replica (tensor parallel where one GPU cannot hold it) and the gpu_memory_utilization to give it; small "
        "models packed onto shared GPUs; every replica assigned to a node. Printed as a table and written as JSON. "
        "A fleet that cannot fit is refused with one line per model (exit code 2).",
    )
    pl.add_argument("file", type=Path, help="fleet file (models.yaml)")
    where = pl.add_mutually_exclusive_group()
    where.add_argument("--nodes", default=None,
                       help="the nodes: COUNTxGPUSxKIND[:GIB] or COUNTxCPUSxcpu, comma-separated (2x8xH100,1x4xL4) "
                       "(default: this machine)")
    where.add_argument("--address", default=None, help="read the nodes of a running Ray cluster (auto: the local one)")
    pl.add_argument("--json", type=Path, default=None, help="where to write the plan (default runs/plans/STEM.json)")
    pl.add_argument("--write-fleet", type=Path, default=None,
                    help="also write the fleet file with the plan's choices (what it chose where entries left open)")

    cc = sub.add_parser(
        "cluster-config", help="a Ray cluster launcher YAML (ray up) or a KubeRay RayService for a fleet file",
        description="Nodes as --nodes gives them, else the fewest 8-GPU nodes the plan fits on; the fleet, with the "
        "plan's choices, deployed at start; Ray's token authentication on.",
    )
    cc.add_argument("file", type=Path, help="fleet file (models.yaml)")
    cc.add_argument("--target", choices=["ray-up", "kuberay"], required=True, help="launcher to write for")
    cc.add_argument("--cloud", choices=["aws", "gcp"], default=None,
                    help="machine types (ray-up: required) or node selectors (kuberay) of this cloud")
    cc.add_argument("-o", "--out", type=Path, required=True, help="file to write")
    cc.add_argument("--nodes", default=None, help="the GPU nodes, as for `cascade plan` (default: the fewest 8-GPU "
                    "nodes of the kinds the entries name)")
    cc.add_argument("--region", default=None, help="cloud region (default us-west-2 on aws, us-central1 on gcp)")
    cc.add_argument("--project", default=None, help="GCP project id (required with --cloud gcp for ray-up)")
    cc.add_argument("--name", default="cascade", help="cluster / RayService name (default cascade)")
    cc.add_argument("--package", default="cascade-serve[gpu]",
                    help="what pip installs on the nodes (default cascade-serve[gpu]; a wheel URL or git+https://...)")
    cc.add_argument("--port", type=int, default=8000, help="HTTP port of the endpoint (default 8000)")

    up = sub.add_parser("up", help="deploy a fleet file on Ray Serve and wait until every model is ready")
    up.add_argument("file", type=Path, help="fleet file (models.yaml, models.cpu.yaml)")
    _add_cluster_args(up)
    up.add_argument("--timeout", type=float, default=900.0,
                    help="seconds the whole command may take: connecting, checking, deploying and the wait for "
                    "readiness (default 900)")
    up.add_argument("--no-auth", action="store_true",
                    help="deploy without API keys even where the running fleet has them (default: refuse)")

    st = sub.add_parser("status", help="the deployed fleet: Serve deployments and the controller's /health")
    _add_cluster_args(st)

    dn = sub.add_parser("down", help="delete the deployed fleet")
    dn.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or the local one)")
    dn.add_argument("--stop-ray", action="store_true", help="also stop the local Ray head node (`ray stop`)")

    ca = sub.add_parser(
        "calibrate", help="replay labelled prompts through the running fleet; fit estimators, cost model and lambda",
        description="Every prompt of --prompts goes to every model of the fleet (it must be up: `cascade up FILE`); "
        "answers are graded, the quality estimators and the GPU-time cost model are fitted on a training split, "
        "every policy is evaluated on the held-out split, and the artifacts (bound to the fleet's models) are "
        "written to --out. Interrupted runs resume from OUT/replay.jsonl.",
    )
    ca.add_argument("file", type=Path, help="fleet file of the running fleet")
    ca.add_argument("--prompts", type=Path, required=True,
                    help="JSON lines: {messages|prompt, answer, [id, grader, task, max_tokens]} per line")
    ca.add_argument("--out", type=Path, default=None,
                    help="artifact folder (default runs/calibration/<fleet file stem>)")
    ca.add_argument("--budget", default=None,
                    help="average GPU-seconds per query (0.05) or a share of the strongest model's cost (40%%)")
    ca.add_argument("--url", default=None, help="endpoint of the fleet (default http://127.0.0.1:8000)")
    ca.add_argument("--held-out", type=float, default=0.4, help="share of prompts held out of training (default 0.4)")
    ca.add_argument("--concurrency", type=int, default=4, help="replay requests in flight (default 4)")
    ca.add_argument("--grader", default="exact_match", help="grader of rows without one (default exact_match)")
    ca.add_argument("--max-tokens", type=int, default=64, help="max_tokens of rows without one (default 64)")
    ca.add_argument("--max-depth", type=int, default=None, help="models per query (default: the fleet file's)")
    ca.add_argument("--seed", type=int, default=0, help="split and estimator seed (default 0)")
    ca.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the report (default 200)")
    ca.add_argument("--budget-margin", type=_margin_se, default=DEFAULT_BUDGET_MARGIN_SE, metavar="SE",
                    help=_MARGIN_HELP.format(default=DEFAULT_BUDGET_MARGIN_SE))
    ca.add_argument("--quiet", action="store_true", help="no progress bars")

    de = sub.add_parser("demo", help="build the trained recall fleet, bring it up locally, calibrate it, and measure "
                        "live what the cascade is worth: accuracy and GPU-seconds against the strongest model alone "
                        "and routing")
    de.add_argument("--fleet", type=Path, default=None, help="fleet file (default models.recall.yaml; "
                    "models.cpu.yaml with --tiny, models.toy.yaml with --toy)")
    de.add_argument("--budget", default="50%", help="GPU-seconds per question, or a share of the strongest model's "
                    "(default 50%%)")
    de.add_argument("--questions", type=int, default=200, help="held-out questions asked of each arm (default 200, "
                    "at most 200)")
    de.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    de.add_argument("--recalibrate", action="store_true", help="replay the calibration prompts again instead of "
                    "refitting from the cached replay")
    de.add_argument("--tiny", action="store_true", help="instead: random tiny models (gibberish answers), a few "
                    "prompts, each answer's routing trace")
    de.add_argument("--toy", action="store_true", help="instead: four tiny models trained to add integers (about "
                    "3.5 min on 2 cores the first time), held-out addition questions with their traces")
    de.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    de.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for readiness (default 900)")
    return parser


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, a local cluster, or "
                   "a new local head node)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host of the endpoint (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the endpoint (default 8000)")


def _up(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cluster.config import FleetConfig
    from serve.deploy import check_reachable, connect, deploy, health_summary, wait_ready

    deadline = time.monotonic() + args.timeout  # --timeout bounds the whole command, not only the wait
    FleetConfig.from_file(args.file)  # a bad file fails here, before any cluster work
    check_reachable(args.address)
    url = f"http://{args.host}:{args.port}"
    if not _api_keys() and not args.no_auth and _requires_api_key(url):
        # Redeploying without keys would silently open a fleet its operator had closed.
        raise ValueError(f"the fleet running at {url} requires API keys and CASCADE_API_KEYS is not set: set it "
                         "to keep authentication on, or pass --no-auth to turn it off")
    console = Console(stderr=True)
    with console.status("connecting to Ray") as status:
        how = connect(args.address, start_local=True)
        status.update(f"deploying {args.file} ({how} Ray cluster)")
        deploy(FleetConfig.from_file(args.file), host=args.host, port=args.port,
               timeout_s=max(deadline - time.monotonic(), 0.0), on_poll=status.update)

        def show(body: dict[str, Any]) -> None:
            status.update("waiting for models: " + health_summary(body))

        wait_ready(url, max(deadline - time.monotonic(), 0.0), show)
    console.print(f"ready: {url}/v1 (models: cascade + {', '.join(FleetConfig.from_file(args.file).model_ids)})")
    return 0


def _api_keys() -> list[str]:
    from serve.app import API_KEYS_ENV

    return [k for k in os.environ.get(API_KEYS_ENV, "").split(",") if k]


def _requires_api_key(url: str) -> bool:
    """Whether an endpoint answers at ``url`` and refuses ``/v1/models`` without a key (nothing there: no)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5):
            return False
    except urllib.error.HTTPError as err:
        return err.code == 401
    except OSError:  # nothing listens: a first deployment
        return False


def _status(args: argparse.Namespace) -> int:
    from ray import serve
    from rich.console import Console
    from rich.table import Table

    from serve.deploy import APP_NAME, connect, fetch_health, placement_line

    if args.address is None and not _ray_running():
        print("cascade: no Ray cluster is running (start one with `cascade up FILE`)", file=sys.stderr)
        return 1
    connect(args.address, start_local=False)
    apps = serve.status().applications
    if APP_NAME not in apps:
        print("cascade: no fleet is deployed (`cascade up FILE`)", file=sys.stderr)
        return 1
    app = apps[APP_NAME]
    table = Table(title=f"application {APP_NAME}: {app.status}")
    for col in ("deployment", "status", "replicas"):
        table.add_column(col)
    for name, dep in app.deployments.items():
        table.add_row(name, str(dep.status), ", ".join(f"{k}: {v}" for k, v in dep.replica_states.items()))
    console = Console()
    console.print(table)
    groups = placement_line()
    if groups:  # a replica that waits for a node (lost, or never there) says so here
        console.print(groups)
    code, body = fetch_health(f"http://{args.host}:{args.port}")
    console.print(f"GET /health -> {code or 'no answer'} {json.dumps(body) if body else ''}")
    return 0 if code == 200 else 1


def _ray_running() -> bool:
    from serve.deploy import _local_cluster_running

    return bool(os.environ.get("RAY_ADDRESS")) or _local_cluster_running()


def _down(args: argparse.Namespace) -> int:
    from serve.deploy import connect, shutdown_app

    if args.address is None and not _ray_running():
        print("cascade: no Ray cluster is running; nothing to take down", file=sys.stderr)
        return 0
    connect(args.address, start_local=False)
    deleted = shutdown_app()
    print("deleted the cascade application" if deleted else "no cascade application was deployed")
    if args.stop_ray:
        import ray

        ray.shutdown()
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop"], check=False, capture_output=True)
        print("stopped the local Ray head node")
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.tiny and args.toy:
        raise ValueError("--tiny and --toy are two different demos: give one")
    if args.tiny or args.toy:
        from cascade_serve.demo import run_demo

        fleet = args.fleet or Path("models.toy.yaml" if args.toy else "models.cpu.yaml")
        return run_demo(fleet, port=args.port, timeout_s=args.timeout, toy=args.toy)
    from cascade_serve.value_demo import DemoOptions, run_value_demo

    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {args.concurrency}")
    return run_value_demo(DemoOptions(fleet_file=args.fleet or Path("models.recall.yaml"), port=args.port,
                                      timeout_s=args.timeout, budget=args.budget, n_questions=args.questions,
                                      concurrency=args.concurrency, recalibrate=args.recalibrate))


def _calibrate(args: argparse.Namespace) -> int:
    from calibration.run import CalibrateOptions, run_calibrate
    from cascade_serve.calibrate import ConsoleReporter, print_summary
    from estimators.artifacts import ArtifactsError

    out = args.out or _DEFAULT_CALIBRATION / args.file.stem
    keys = _api_keys()
    opts = CalibrateOptions(
        fleet_file=args.file, prompts=args.prompts, out=out, url=args.url or "http://127.0.0.1:8000",
        budget=args.budget, held_out=args.held_out, concurrency=args.concurrency, seed=args.seed,
        grader=args.grader, max_tokens=args.max_tokens, max_depth=args.max_depth,
        api_key=keys[0] if keys else None, bootstrap=args.bootstrap, budget_margin_se=args.budget_margin,
    )
    try:
        with ConsoleReporter(quiet=args.quiet) as reporter:
            summary = run_calibrate(opts, reporter=reporter)
    except ArtifactsError as exc:
        print(f"cascade: error: {exc}", file=sys.stderr)
        return 2
    print_summary(summary, out)
    return 0


def _build_models(args: argparse.Namespace) -> int:
    from cascade_serve.models import build_models

    if not (args.toy or args.recall) and (args.eval or args.seed):
        raise ValueError("--eval and --seed apply to --toy only, or --recall (the tiny models are random, nothing "
                         "to evaluate)")
    return build_models(args)


def _validate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cluster.config import ConfigError, FleetConfig

    try:
        fleet = FleetConfig.from_file(args.file)
    except ConfigError as exc:
        # Every problem on its own line, each naming its YAML key path.
        print(f"cascade: error: {exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    table = Table(title=f"{args.file}: {len(fleet.models)} models, {fleet.total_gpus:g} GPUs at minimum replicas")
    for col in ("model id", "source", "accelerator", "GPUs/replica", "replicas"):
        table.add_column(col)
    for m in fleet.models:
        auto = m.deployment_config.get("autoscaling_config") or {}
        replicas = f"{auto.get('min_replicas', 1)}..{auto.get('max_replicas', 1)}" if auto else str(
            m.deployment_config.get("num_replicas", 1)
        )
        table.add_row(
            m.model_id, m.model_loading_config.model_source or m.model_id,
            "cpu" if m.on_cpu else (m.accelerator_type or "any"), f"{m.gpus_per_replica:g}", replicas,
        )
    console = Console()
    console.print(table)
    c = fleet.cascade
    console.print(f"cascade: policy={c.policy} max_depth={c.max_depth} budget_gpu_s={c.budget_gpu_s} "
                  f"lambda={c.lambda_} stage_timeout_s={c.stage_timeout_s}")
    return 0


def _eval_routerbench(args: argparse.Namespace) -> int:
    from cascade_serve.evaluate import eval_routerbench

    return eval_routerbench(args, default_data=_DEFAULT_ROUTERBENCH)


def main(argv: list[str] | None = None) -> int:
    from cluster.config import ConfigError

    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "eval" and args.benchmark == "routerbench":
            return _eval_routerbench(args)
        if args.command == "validate":
            return _validate(args)
        if args.command == "plan":
            from cascade_serve.plan import run_plan

            return run_plan(args)
        if args.command == "cluster-config":
            from cascade_serve.cluster_config import run_cluster_config

            return run_cluster_config(args)
        if args.command == "models" and args.models_command == "build":
            return _build_models(args)
        if args.command == "up":
            return _up(args)
        if args.command == "status":
            return _status(args)
        if args.command == "down":
            return _down(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "calibrate":
            return _calibrate(args)
    except ConfigError as exc:
        if len(exc.problems) == 1:  # one fault, one line
            print(f"cascade: error: {exc.source}: {exc.problems[0]}", file=sys.stderr)
            return 2
        print(f"cascade: error: {exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"cascade: error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:  # the cluster is up but the fleet did not get ready in time
        print(f"cascade: error: {exc}", file=sys.stderr)
        return 1
    parser.error("unknown command")  # argparse exits with code 2
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
