"""The ``gmmjax`` command line.

Subcommands::

  gmmjax fit DATA --n-components K [--covariance-type T] [--rank Q]
             [--n-init N]
             [--max-iter N] [--tol T] [--reg-covar R] [--init-params M]
             [--seed S] [--verbose] [--nan-policy P] --out MODEL
  gmmjax predict MODEL DATA [--proba] [--nan-policy P] [--out FILE]
  gmmjax score MODEL DATA [--nan-policy P]
  gmmjax sample MODEL -n N [--seed S] --out FILE
  gmmjax select DATA --k-min 1 --k-max 20 [--criterion bic|aic]
             [--plot PNG] [--out MODEL]
  gmmjax demo [--out PNG]

DATA is ``.npy``, ``.npz`` (one array, or the one named ``X``), ``.csv``
(comma separated, header optional) or ``.parquet`` (needs pyarrow), with one
row per sample; empty CSV fields (and NaN in any format) are missing
values, refused unless ``--nan-policy marginalize`` (EM over the observed
entries; a model fitted so scores incomplete rows by default). MODEL is a
file written by ``gmmjax fit`` or
``gmmjax.save``. Mistakes in the input (a missing file, an unknown format,
NaN in the data, a model/data feature mismatch) print ``gmmjax: error: ...``
and exit with status 1; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from gmmjax._cli_files import (  # noqa: F401 (the command line's API)
  DATA_FORMATS,
  OUTPUT_FORMATS,
  UserError,
  check_features,
  check_out,
  load_model,
  read_data,
  write_array,
)

# -- progress -----------------------------------------------------------------


def _want_progress(args) -> bool:
  if args.progress is not None:
    return args.progress
  return sys.stderr.isatty()


# -- subcommands ----------------------------------------------------------------


def fit(args) -> int:
  import warnings

  import numpy as np

  import gmmjax as gx
  X = read_data(args.data, allow_nan=args.nan_policy == "marginalize")
  check_out(args.out, (".npz",))
  if X.shape[0] < args.n_components:
    raise UserError(f"{args.data} has {X.shape[0]} samples, fewer than "
                    f"--n-components {args.n_components}")
  gm = gx.GaussianMixture(
      args.n_components, covariance_type=args.covariance_type,
      n_init=args.n_init, max_iter=args.max_iter, tol=args.tol,
      reg_covar=args.reg_covar, init_params=args.init_params,
      random_state=args.seed, verbose=2 if args.verbose else 0,
      verbose_interval=args.verbose_interval, rank=args.rank,
      nan_policy=args.nan_policy)
  # --verbose prints lines of its own: a bar between them would garble both.
  # The bar is tqdm's when tqdm is installed, else a text line.
  show = _want_progress(args) and not args.verbose
  start = time.perf_counter()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    gm.fit(X, progress=show)
  for w in caught:
    print(f"gmmjax: warning: {w.message}", file=sys.stderr)
  lapse = time.perf_counter() - start
  gx.save(args.out, gm)
  np.set_printoptions(precision=4, suppress=True)
  print(f"fitted {args.n_components} {args.covariance_type} components to "
        f"{X.shape[0]} samples x {X.shape[1]} features in {lapse:.2f}s")
  print(f"converged:      {gm.converged_} after {gm.n_iter_} iterations")
  print(f"log-likelihood: {gm.score(X):.5f} (mean per sample)")
  print(f"BIC:            {gm.bic(X):.3f}")
  print(f"AIC:            {gm.aic(X):.3f}")
  print(f"weights:        {gm.weights_}")
  print(f"model saved to {args.out}")
  return 0


def _model_and_data(args):
  """The model (its ``nan_policy`` set by ``--nan-policy`` if given) and
  the data, NaN allowed where the policy marginalizes."""
  model = load_model(args.model)
  if args.nan_policy is not None:
    model.set_params(nan_policy=args.nan_policy)
  policy = getattr(model, "nan_policy", "raise")
  return model, read_data(args.data, allow_nan=policy == "marginalize")


def predict(args) -> int:
  import numpy as np
  model, X = _model_and_data(args)
  check_features(model, X, args.data)
  if args.out:
    check_out(args.out, OUTPUT_FORMATS)
  out = model.predict_proba(X) if args.proba else model.predict(X)
  if args.out:
    write_array(args.out, out)
    what = "probabilities" if args.proba else "labels"
    print(f"{what} of {X.shape[0]} samples saved to {args.out}")
  else:
    np.savetxt(sys.stdout, out if out.ndim == 2 else out[:, None],
               delimiter=",", fmt="%.6g" if args.proba else "%d")
  return 0


def score(args) -> int:
  model, X = _model_and_data(args)
  check_features(model, X, args.data)
  print(f"log-likelihood: {model.score(X):.6f} (mean per sample, "
        f"{X.shape[0]} samples)")
  print(f"BIC:            {model.bic(X):.3f}")
  print(f"AIC:            {model.aic(X):.3f}")
  return 0


def sample(args) -> int:
  import jax

  import gmmjax as gx
  model = load_model(args.model)
  if args.n < 1:
    raise UserError(f"-n should be a positive number of samples, got {args.n}")
  check_out(args.out, OUTPUT_FORMATS)
  X, y = gx.sample(jax.random.key(args.seed), model.params_, int(args.n))
  write_array(args.out, jax.device_get(X))
  if args.labels:
    check_out(args.labels, OUTPUT_FORMATS)
    write_array(args.labels, jax.device_get(y))
  print(f"{args.n} samples saved to {args.out}")
  return 0


def select(args) -> int:
  import jax

  import gmmjax as gx
  X = read_data(args.data)
  if args.k_min < 1 or args.k_max < args.k_min:
    raise UserError(f"need 1 <= --k-min <= --k-max, got --k-min {args.k_min} "
                    f"--k-max {args.k_max}")
  if args.k_max > X.shape[0]:
    raise UserError(f"--k-max {args.k_max} exceeds the {X.shape[0]} samples "
                    f"of {args.data}")
  if args.out:
    check_out(args.out, (".npz",))
  if args.plot:
    check_out(args.plot, (".png", ".pdf", ".svg"))
  ks = list(range(args.k_min, args.k_max + 1))
  start = time.perf_counter()
  shown = _want_progress(args)
  with (gx.progress_bar(args.max_iter, label=f"EM over k={ks[0]}..{ks[-1]}")
        if shown else contextlib.nullcontext()) as bar:
    result = gx.select_n_components(jax.random.key(args.seed), X, ks,
                                    covariance_type=args.covariance_type,
                                    n_init=args.n_init, method=args.init_params,
                                    max_iter=args.max_iter, tol=args.tol,
                                    reg_covar=args.reg_covar,
                                    callback=bar and bar.callback,
                                    criterion=args.criterion)
  lapse = time.perf_counter() - start
  print(f"{len(ks)} {args.covariance_type} mixtures (k = {ks[0]}..{ks[-1]}, "
        f"{args.n_init} restart(s) each) fitted to {X.shape[0]} samples x "
        f"{X.shape[1]} features in one compiled sweep, {lapse:.2f}s")
  print(gx.format_table(result))
  print(f"best k by {args.criterion.upper()}: {result.best_k}")
  if args.out:
    gx.save(args.out, result.best_params)
    print(f"best model saved to {args.out}")
  if args.plot:
    try:
      import matplotlib
      matplotlib.use("Agg")
      import matplotlib.pyplot as plt
    except ImportError:
      print("matplotlib is not installed: no plot (pip install "
            "'gmmjax[plot]')")
      return 0
    from gmmjax import plot
    fig, ax = plt.subplots(figsize=(6, 4))
    plot.plot_criterion(result, ax=ax)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    plt.close(fig)
    print(f"plot saved to {args.plot}")
  return 0


def demo(args) -> int:
  """The README's main job: a fit on built-in data, a summary and a plot."""
  import numpy as np

  import gmmjax as gx
  from gmmjax import datasets

  X, _ = datasets.blobs(n_samples=1000, n_centers=5, seed=args.seed)
  # Two of the five blobs overlap: with Lloyd's k-means labels (the default
  # init) and 4 restarts, half of the random states tried merged them (as
  # scikit-learn's did); k-means++ seeding with 8 restarts found all five
  # in 6 of 6.
  gm = gx.GaussianMixture(5, n_init=8, init_params="k-means++",
                          random_state=args.seed, tol=1e-4,
                          max_iter=200)
  labels = gm.fit_predict(X)
  np.set_printoptions(precision=3, suppress=True)
  print("gmmjax demo: 1000 points, 5 stretched blobs, 5 full-covariance "
        "components, 8 restarts (k-means++ seeding)")
  print(f"converged:       {gm.converged_}")
  print(f"iterations:      {gm.n_iter_}")
  print(f"log-likelihood:  {gm.score(X):.5f} (mean per sample)")
  print(f"lower bound:     {gm.lower_bound_:.5f}")
  print(f"BIC:             {gm.bic(X):.2f}")
  print("weights:        ", gm.weights_)
  print("means:")
  print(gm.means_)
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib is not installed: no plot (pip install 'gmmjax[plot]')")
    return 0
  from gmmjax import plot
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
  plot.plot_ellipses(gm, X, labels, ax=ax1)
  ax1.set_title("gmmjax: fitted components (1, 2, 3 sigma)")
  plot.plot_log_likelihood(gm.lower_bounds_, ax=ax2)
  ax2.set_title("EM convergence (best restart)")
  fig.tight_layout()
  fig.savefig(args.out, dpi=110)
  print(f"plot saved to {args.out}")
  return 0


# -- parser ---------------------------------------------------------------------


def _add_fit_options(p, *, n_components: bool):
  if n_components:
    p.add_argument("--n-components", "-k", type=int, required=True,
                   help="number of mixture components")
  p.add_argument("--covariance-type", default="full",
                 choices=("full", "tied", "diag", "spherical", "lowrank"))
  if n_components:
    p.add_argument("--rank", type=int, default=None,
                   help="factors per component of --covariance-type "
                   "lowrank (W W^T + diag(psi), 1 <= rank < n_features)")
  p.add_argument("--n-init", type=int, default=1,
                 help="restarts (run together, vmapped)")
  p.add_argument("--init-params", default="kmeans",
                 choices=("kmeans", "k-means++", "random",
                          "random_from_data"))
  p.add_argument("--max-iter", type=int, default=100)
  p.add_argument("--tol", type=float, default=1e-3)
  p.add_argument("--reg-covar", type=float, default=1e-6)
  p.add_argument("--seed", type=int, default=0)
  progress = p.add_mutually_exclusive_group()
  progress.add_argument("--progress", dest="progress", action="store_true",
                        default=None, help="show a progress bar (default: "
                        "when stderr is a terminal)")
  progress.add_argument("--no-progress", dest="progress",
                        action="store_false")


def _add_nan_policy(p, default):
  p.add_argument("--nan-policy", default=default,
                 choices=("raise", "marginalize"),
                 help="missing values (NaN, empty CSV fields): 'raise' "
                 "refuses them, 'marginalize' uses each row's observed "
                 "entries" + ("" if default else " (default: the model's)"))


def _positive_int(text):
  try:
    value = int(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from e
  if value < 1:
    raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
  return value


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="gmmjax", description="Gaussian mixture models fitted by EM in JAX.")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("fit", help="fit a mixture to a data file, save the "
                     "model")
  p.add_argument("data", help="data file: .npy, .npz, .csv or .parquet")
  _add_fit_options(p, n_components=True)
  p.add_argument("--verbose", "-v", action="store_true",
                 help="print iteration, log-likelihood and change")
  p.add_argument("--verbose-interval", type=_positive_int, default=10)
  _add_nan_policy(p, "raise")
  p.add_argument("--out", "-o", required=True, help="model file (.npz)")
  p.set_defaults(func=fit)

  p = sub.add_parser("predict", help="component labels (or probabilities) "
                     "of samples")
  p.add_argument("model", help="model file from 'gmmjax fit'")
  p.add_argument("data", help="data file")
  p.add_argument("--proba", action="store_true",
                 help="write responsibilities (n_samples, n_components)")
  p.add_argument("--out", "-o", help=".npy, .npz or .csv (default: print)")
  _add_nan_policy(p, None)
  p.set_defaults(func=predict)

  p = sub.add_parser("score", help="mean log-likelihood, BIC and AIC of data")
  p.add_argument("model")
  p.add_argument("data")
  _add_nan_policy(p, None)
  p.set_defaults(func=score)

  p = sub.add_parser("sample", help="draw samples from a model")
  p.add_argument("model")
  p.add_argument("-n", type=int, required=True, help="number of samples")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", "-o", required=True, help=".npy, .npz or .csv")
  p.add_argument("--labels", help="also write the component labels here")
  p.set_defaults(func=sample)

  p = sub.add_parser("select", help="choose the number of components by "
                     "BIC or AIC")
  p.add_argument("data")
  p.add_argument("--k-min", type=int, default=1)
  p.add_argument("--k-max", type=int, default=10)
  p.add_argument("--criterion", default="bic", choices=("bic", "aic"))
  _add_fit_options(p, n_components=False)
  p.add_argument("--plot", default="gmmjax_select.png",
                 help="criterion curve (PNG/PDF/SVG); '' for none")
  p.add_argument("--out", "-o", help="save the best model here (.npz)")
  p.set_defaults(func=select)

  p = sub.add_parser("demo", help="fit built-in data, print a summary, save a "
                     "plot")
  p.add_argument("--out", default="gmmjax_demo.png", help="PNG path")
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(func=demo)
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  import gmmjax as gx  # after parsing: --help stays quick
  gx.enable_default_cache()  # every subcommand compiles
  try:
    return args.func(args)
  except UserError as e:
    print(f"gmmjax: error: {e}", file=sys.stderr)
    return 1
  except (ValueError, FileNotFoundError, IsADirectoryError,
          PermissionError) as e:
    # The library's own checks (e.g. a parameter out of range) are the
    # user's mistakes too: one line, no traceback (GMMJAX_DEBUG=1 shows it).
    if os.environ.get("GMMJAX_DEBUG"):
      raise
    print(f"gmmjax: error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
