"""Data and model files for the command line: reading ``.npy``, ``.npz``,
``.csv`` and ``.parquet`` tables, writing results, loading models, and the
one-line errors (:class:`UserError`) their mistakes give."""

from __future__ import annotations

import os

DATA_FORMATS = (".npy", ".npz", ".csv", ".parquet")
OUTPUT_FORMATS = (".npy", ".csv", ".npz")


class UserError(Exception):
  """A mistake in the command's input: reported as one line, exit status 1."""


# -- reading and writing data -------------------------------------------------


def _cell(text):
  """A CSV field as a float; an empty field is missing (NaN)."""
  text = text.strip()
  return float(text) if text else float("nan")


def _read_csv(path):
  import numpy as np
  with open(path, encoding="utf-8") as f:
    first = f.readline()
  skip = 0
  try:
    [float(v) for v in first.strip().split(",")]
  except ValueError:
    skip = 1  # a header row
  try:
    return np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2,
                      dtype=np.float64)
  except ValueError:
    pass
  try:  # again, with empty fields as missing values
    return np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2,
                      dtype=np.float64, converters=_cell)
  except ValueError as e:
    raise UserError(f"could not parse {path} as numeric CSV: {e}") from e


def _read_parquet(path):
  import numpy as np
  try:
    import pyarrow.parquet as pq
  except ImportError as e:
    raise UserError(f"reading {path} needs pyarrow: pip install pyarrow") from e
  try:
    table = pq.read_table(path)
  except Exception as e:  # pyarrow raises its own error types
    raise UserError(f"could not read {path} as parquet: {e}") from e
  try:
    cols = [np.asarray(c.to_numpy(), dtype=np.float64) for c in table.columns]
  except (TypeError, ValueError) as e:
    raise UserError(f"{path} has non-numeric columns: {e}") from e
  return np.column_stack(cols)


def read_data(path, allow_nan: bool = False):
  """A 2-D float64 NumPy array from a data file, or a :class:`UserError`
  (NaN, i.e. missing values, only with ``allow_nan``)."""
  import numpy as np
  if not os.path.exists(path):
    raise UserError(f"data file {path!r} does not exist")
  if os.path.isdir(path):
    raise UserError(f"{path!r} is a directory, not a data file")
  ext = os.path.splitext(path)[1].lower()
  if ext not in DATA_FORMATS:
    raise UserError(f"unsupported data format {ext or '(none)'!r} for "
                    f"{path}: use one of {', '.join(DATA_FORMATS)}")
  if ext == ".csv":
    X = _read_csv(path)
  elif ext == ".parquet":
    X = _read_parquet(path)
  else:
    try:
      loaded = np.load(path, allow_pickle=False)
    except ValueError as e:
      raise UserError(f"could not read {path}: it holds Python objects "
                      f"(pickle), which gmmjax does not load ({e})") from e
    except Exception as e:  # zip/format errors of a corrupt file
      raise UserError(f"could not read {path} as {ext}: {e}") from e
    if ext == ".npz":
      with loaded:
        names = list(loaded.files)
        if len(names) == 1:
          X = loaded[names[0]]
        elif "X" in names:
          X = loaded["X"]
        else:
          raise UserError(f"{path} holds several arrays {names}: name the "
                          "data array 'X'")
    else:
      X = loaded
  X = np.asarray(X)
  if X.dtype.kind not in "biuf":
    raise UserError(f"{path} does not hold numbers (dtype {X.dtype})")
  if X.ndim == 1:
    X = X[:, None]  # a file of one column: one feature per row
  if X.ndim != 2:
    raise UserError(f"{path} holds an array of shape {X.shape}; expected "
                    "(n_samples, n_features)")
  if X.shape[0] == 0:
    raise UserError(f"{path} holds no samples")
  if np.isnan(X).any() and not allow_nan:
    rows = np.unique(np.nonzero(np.isnan(X))[0])
    raise UserError(f"{path} contains NaN (missing values) in {len(rows)} "
                    f"row(s), the first at row index {rows[0]} (0-based): "
                    "remove or impute them, or pass --nan-policy "
                    "marginalize to treat them as missing")
  if np.isinf(X).any():
    raise UserError(f"{path} contains infinite values")
  return X.astype(np.float64, copy=False)


def write_array(path, A, fmt="%.9g"):
  """Writes ``A`` to ``.npy``, ``.npz`` (as ``X``) or ``.csv``."""
  import numpy as np
  check_out(path, OUTPUT_FORMATS)
  ext = os.path.splitext(path)[1].lower()
  A = np.asarray(A)
  if ext == ".npy":
    np.save(path, A, allow_pickle=False)
  elif ext == ".npz":
    with open(path, "wb") as f:
      np.savez(f, X=A)
  else:
    np.savetxt(path, A if A.ndim == 2 else A[:, None], delimiter=",",
               fmt="%d" if A.dtype.kind in "iub" else fmt)


def load_model(path):
  """A fitted estimator from a model file (params are wrapped)."""
  import gmmjax as gx
  if not os.path.exists(path):
    raise UserError(f"model file {path!r} does not exist")
  try:
    model = gx.load(path)
  except ValueError as e:
    raise UserError(str(e)) from e
  if isinstance(model, gx.GMMParams):
    return gx.GaussianMixture.from_params(model)
  return model


def check_features(model, X, data_path):
  if X.shape[1] != model.n_features_in_:
    raise UserError(
        f"the model has {model.n_features_in_} feature(s) but {data_path} has "
        f"{X.shape[1]} column(s): use data with the model's features")


def check_out(path, formats):
  ext = os.path.splitext(path)[1].lower()
  if ext not in formats:
    raise UserError(f"unsupported output format {ext or '(none)'!r} for "
                    f"{path}: use one of {', '.join(formats)}")
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise UserError(f"output directory {directory!r} does not exist")
