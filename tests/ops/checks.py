"""The one helper the op tests go through (in the spirit of tinygrad's helper_test_op): the same
inputs through the fast op (fastconv.functional), its NumPy twin (fastconv.reference) and
PyTorch, forward and backward, in float32 and float64, plus central differences of the
reference; and the checks every op shares (layouts, integer inputs, thread counts, non-finite
values, layers against their torch twins through state dicts).

An op is given as a pair of callables per implementation:

    forward(*inputs) -> y
    backward(grad_y, *inputs) -> the gradients of the inputs, in their order (a tuple, or one
                                 array for a one-input op; None for an input without one)

and torch_fn(*tensors) -> y for PyTorch, which gives the expected gradients by autograd.
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable, Sequence

import numpy as np

from fastconv.gradcheck import eval_numerical_gradient, gradcheck_layer, rel_error
from numerics import assert_close

DTYPES = (np.float32, np.float64)


def pair(module, name: str, backward: str | None = None, **kwargs):
    """(forward, backward) of an elementwise-style op `name` of `module` whose backward is
    `name + '_backward'(grad_y, *inputs, **kwargs)` and takes the same keyword arguments."""
    fwd = getattr(module, name)
    bwd = getattr(module, backward or name + "_backward")
    return (lambda *xs: fwd(*xs, **kwargs)), (lambda gy, *xs: bwd(gy, *xs, **kwargs))


def _grads(result, n):
    grads = result if isinstance(result, tuple) else (result,)
    assert len(grads) == n, f"backward returned {len(grads)} gradients for {n} inputs"
    return grads


def _torch_run(torch, torch_fn, inputs, grad_y):
    tensors = [torch.tensor(a, requires_grad=True) for a in inputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        y = torch_fn(*tensors)
    grads = torch.autograd.grad(y, tensors, torch.tensor(grad_y), allow_unused=True) \
        if y.numel() else [torch.zeros_like(t) for t in tensors]
    return y.detach().numpy(), [None if g is None else g.numpy() for g in grads]


def random_inputs(rng, shapes, dtype, make=None):
    """N(0, 1) arrays of `shapes` (or make(rng, shape, dtype) for each)."""
    if make is not None:
        return [np.asarray(make(rng, s, dtype), dtype) for s in shapes]
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def check_op(fast, reference, torch_fn, shapes: Sequence[tuple], *, tol=None, grad_tol=None,
             dtypes=DTYPES, rng=None, make=None, torch=None, numerical: bool = True,
             max_numerical: int = 40) -> dict:
    """Run the op on the same random inputs of `shapes` in each dtype; assert:

    * fast and reference outputs: dtype, C order, shape and values (assert_close, tolerance
      `tol` relative to max(1, max|expected|), default numerics.TOLERANCE) against torch;
    * their gradients of a random grad_y against torch's autograd (`grad_tol`);
    * in float64, the reference's gradients against central differences of
      sum(reference(*inputs) * grad_y) (relative error < 1e-7 on up to `max_numerical`
      entries per input).

    tol / grad_tol: a number, or a dict dtype -> number. torch: the module, or None to compare
    fast with reference only. Returns {(dtype name, what): max abs error} against torch.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    errors = {}
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        inputs = random_inputs(rng, shapes, dtype, make)
        y_fast, y_ref = fast[0](*inputs), reference[0](*inputs)
        for y in (y_fast, y_ref):
            assert y.dtype == dtype and y.flags.c_contiguous, (y.dtype, dtype)
        gy = rng.standard_normal(y_fast.shape).astype(dtype)
        g_fast = _grads(fast[1](gy, *inputs), len(inputs))
        g_ref = _grads(reference[1](gy, *inputs), len(inputs))
        t = tol[dtype] if isinstance(tol, dict) else tol
        gt = grad_tol[dtype] if isinstance(grad_tol, dict) else grad_tol
        if torch is not None:
            y_t, g_t = _torch_run(torch, torch_fn, inputs, gy)
            expected = [("y", y_t, y_fast, y_ref)] + [
                (f"grad {i}", e, a, b) for i, (e, a, b) in enumerate(zip(g_t, g_fast, g_ref))
                if a is not None]
        else:
            expected = [("y", y_ref, y_fast, y_ref)] + [
                (f"grad {i}", b, a, b) for i, (a, b) in enumerate(zip(g_fast, g_ref))
                if a is not None]
        for what, e, a, b in expected:
            e = np.zeros(a.shape) if e is None else e  # torch: an input the output ignores
            tolerance = t if what == "y" else gt
            for name, got in (("fast", a), ("reference", b)):
                assert got.dtype == dtype, (name, what, got.dtype)
                assert_close(got, e, dtype, tolerance, f"{dtype} {name} {what}")
            if a.size:
                errors[(dtype.name, what)] = float(np.max(np.abs(a.astype(float) - e)))
        if dtype == np.float64 and numerical:
            _check_numerically(reference, inputs, gy, g_ref, rng, max_numerical)
    return errors


def _check_numerically(reference, inputs, gy, grads, rng, max_numerical):
    def loss(_):
        return float(np.vdot(reference[0](*inputs), gy))

    for a, g in zip(inputs, grads):
        if g is None or a.size == 0:
            continue
        idx = None if a.size <= max_numerical else rng.choice(a.size, max_numerical, replace=False)
        num = eval_numerical_gradient(loss, a, indices=idx)
        ana = g if idx is None else g.reshape(-1)[idx]
        # Or within 1e-10 |x| |gy| absolutely: in a far tail the forward cancels (GELU's
        # 1 + tanh(v) below x ~ -5, exactly 0 at x ~ -7), an absolute error ~1e-16 |x| |gy|
        # that the central difference over 2e-6 turns into ~1e-10 |x| |gy|, while the
        # gradient is ~1e-10 or less (relative error up to 1: rounding, not a wrong gradient).
        err = rel_error(ana, num)
        floor = 1e-10 * max(1.0, float(np.max(np.abs(a))) * float(np.max(np.abs(gy), initial=0)))
        assert err < 1e-7 or np.max(np.abs(ana - num)) < floor, (err, ana, num)


def assert_same_with_threads(threads, run: Callable[[], tuple]) -> None:
    """run() (a tuple of arrays) gives the same bits with 1, 2 and 3 threads."""
    results = []
    for n in (1, 2, 3):
        threads(n)
        results.append(run())
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def layouts(x: np.ndarray):
    """(name, view) pairs of x's values in other memory layouts: reversed along the last axis
    and then flipped back as a negative-stride view, Fortran order, a strided slice."""
    rev = np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    wide[..., ::2] = x
    return [("negative strides", rev), ("fortran", np.asfortranarray(x)),
            ("strided", wide[..., ::2])]


def check_layouts(fn: Callable[[np.ndarray], object], x: np.ndarray) -> None:
    """fn gives the same bits for x in any layout (the result, or each array of a tuple)."""
    want = fn(np.ascontiguousarray(x))
    for name, view in layouts(x):
        got = fn(view)
        for a, b in zip(want if isinstance(want, tuple) else (want,),
                        got if isinstance(got, tuple) else (got,)):
            np.testing.assert_array_equal(a, b, err_msg=name)


def check_integer_input(fn: Callable[[np.ndarray], np.ndarray], x_int: np.ndarray) -> None:
    """Integer (and bool) input computes in float32, as the other ops: the same bits as the
    float32 conversion."""
    for x in (x_int, x_int.astype(np.int8), x_int != 0):
        y = fn(x)
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y, fn(x.astype(np.float32)))


def assert_same_nonfinite(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """Same NaN positions, same infinities, finite values close (float32 tolerance)."""
    got, want = np.asarray(got, float), np.asarray(want, float)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN map")
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{what}: infinities")
    fin = np.isfinite(want)
    assert np.isfinite(got[fin]).all(), what
    assert_close(got[fin], want[fin], np.float32, what=what)


# ---- layers ---------------------------------------------------------------------------------

def _torch_layer_run(torch, tlayer, x, g):
    xt = torch.tensor(x, requires_grad=True)
    y = tlayer(xt)
    y.backward(torch.tensor(g))
    grads = {n: p.grad.numpy().copy() for n, p in tlayer.named_parameters()}
    return y.detach().numpy(), xt.grad.numpy(), grads


def check_layer(torch, make: Callable, make_torch: Callable, input_shape: tuple,
                dtypes=DTYPES, seed: int = 0, gradcheck: bool = True) -> None:
    """Our layer against its torch twin: torch's state dict (its default initialisation) loaded
    into ours, then forward, input gradient and parameter gradients compared in each dtype
    (assert_close tolerances), the state dicts' keys and shapes equal, and in float64 our
    layer's gradients against central differences (fastconv.gradcheck, all < 1e-6).

    make() -> our layer; make_torch(torch) -> torch's.
    """
    for dtype in dtypes:
        torch.manual_seed(seed)
        tlayer = make_torch(torch).to(torch.float64 if dtype == np.float64 else torch.float32)
        layer = make().astype(dtype)
        theirs = {k: v.detach().numpy() for k, v in tlayer.state_dict().items()}
        assert list(layer.state_dict()) == list(theirs)
        for k, v in layer.state_dict().items():
            assert v.shape == theirs[k].shape, k
        layer.load_state_dict(theirs)
        gen = np.random.default_rng(seed)
        x = gen.standard_normal(input_shape).astype(dtype)
        y = layer(x)
        assert y.shape == tuple(layer.output_shape(input_shape))
        g = gen.standard_normal(y.shape).astype(dtype)
        gx = layer.backward(g)
        ty, tgx, tgrads = _torch_layer_run(torch, tlayer, x, g)
        assert y.dtype == dtype and gx.dtype == dtype
        assert_close(y, ty, dtype, what=f"{dtype.__name__} output")
        assert_close(gx, tgx, dtype, what=f"{dtype.__name__} grad_x")
        grads = {n: p.grad for n, p in layer.named_parameters()}
        assert set(grads) == set(tgrads)
        for k, v in grads.items():
            assert v.dtype == dtype
            assert_close(v, tgrads[k], dtype, what=f"{dtype.__name__} grad {k}")
    if gradcheck:
        errors = gradcheck_layer(copy.deepcopy(make()), input_shape, seed=seed, max_checks=60)
        assert all(err < 1e-6 for err in errors.values()), errors
