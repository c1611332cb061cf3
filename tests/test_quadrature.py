"""The time grids (vsmd.diffusion.grids) and the quadrature and Lagrange multistep helpers
(vsmd.diffusion.quadrature) against values recorded before they moved there and against independent constructions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsmd.diffusion import make_process
from vsmd.diffusion.grids import AGM_T_MAX, EI_GRIDS, agm_grid, ei_grid, uniform_grid
from vsmd.diffusion.quadrature import gauss_legendre, lagrange_basis, multistep_weights, on_interval

F64 = torch.float64

# Recorded from the code before the grids moved into grids.py (float32 grids as exact Python floats).
RECORDED = {
    ("uniform_grid", 7): [1.0, 0.8335000276565552, 0.6669999957084656, 0.5005000233650208, 0.33399999141693115,
                          0.16750000417232513, 0.0010000000474974513],
    ("quadratic", None): [1.0, 0.7658593654632568, 0.5629374980926514, 0.3912343680858612, 0.25075000524520874,
                          0.14148437976837158, 0.06343749910593033, 0.016609374433755875, 0.0010000000474974513],
    ("uniform", None): [1.0, 0.875124990940094, 0.750249981880188, 0.625374972820282, 0.5005000233650208,
                        0.37562501430511475, 0.25075000524520874, 0.12587499618530273, 0.0010000000474974513],
    ("log", None): [1.0, 0.4216965138912201, 0.17782793939113617, 0.0749894231557846, 0.03162277489900589,
                    0.013335213996469975, 0.005623413249850273, 0.0023713738191872835, 0.0010000000474974513],
    ("quadratic", 0.02): [1.0, 0.770312488079071, 0.5712500214576721, 0.40281251072883606, 0.26499998569488525,
                          0.15781250596046448, 0.08124999701976776, 0.03531249985098839, 0.019999999552965164],
    ("agm quadratic", 0.9): [0.0, 0.024999999999999998, 0.09999999999999999, 0.225, 0.4000000000000001,
                             0.6250000000000001, 0.9],
    ("agm uniform", None): [0.0, 0.16649999999999998, 0.33299999999999996, 0.4995, 0.666, 0.8325, 0.999],
}


def test_the_grids_are_the_recorded_ones_bit_for_bit():
    p = make_process("vsdm", (2,))
    assert p.time_grid(7).tolist() == uniform_grid(p.t_max, p.t_eps, 7).tolist() == RECORDED[("uniform_grid", 7)]
    for kind in EI_GRIDS:
        grid = ei_grid(p, 9, kind)
        assert grid.dtype == torch.float32 and grid.tolist() == RECORDED[(kind, None)]
    assert ei_grid(make_process("cld", (2,)), 9, "quadratic", 0.02).tolist() == RECORDED[("quadratic", 0.02)]
    assert agm_grid(7, 0.9).dtype == F64 and agm_grid(7, 0.9).tolist() == RECORDED[("agm quadratic", 0.9)]
    assert agm_grid(7, kind="uniform").tolist() == RECORDED[("agm uniform", None)]
    assert float(agm_grid(5)[-1]) == AGM_T_MAX


@pytest.mark.parametrize("n", [2, 4, 6, 24])
def test_gauss_legendre_matches_numpy(n):
    x, w = gauss_legendre(n)
    gx, gw = np.polynomial.legendre.leggauss(n)
    np.testing.assert_allclose(x.numpy(), gx, rtol=0, atol=1e-14)
    np.testing.assert_allclose(w.numpy(), gw, rtol=0, atol=1e-14)
    # exact for polynomials of degree 2n - 1, on any interval
    tau, qw = on_interval((x, w), torch.tensor(0.3, dtype=F64), torch.tensor(1.7, dtype=F64))
    assert float((qw * tau ** (2 * n - 1)).sum()) == pytest.approx((1.7 ** (2 * n) - 0.3 ** (2 * n)) / (2 * n),
                                                                    rel=1e-12)


def test_lagrange_basis_is_the_cardinal_basis():
    nodes = [0.9, 0.5, 0.2]
    z = torch.tensor(nodes, dtype=F64)
    basis = torch.stack([lagrange_basis(z, nodes, j) for j in range(3)])
    torch.testing.assert_close(basis, torch.eye(3, dtype=F64))
    zz = torch.linspace(-1, 2, 11, dtype=F64)
    torch.testing.assert_close(sum(lagrange_basis(zz, nodes, j) for j in range(3)), torch.ones_like(zz))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_multistep_weights_are_the_integrals_of_the_lagrange_basis(order):
    """Against numpy's exact polynomial integrals of the basis built from its roots."""
    times = agm_grid(8, 0.9)
    w, u = multistep_weights(times, order)
    t = times.tolist()
    assert w.shape == u.shape == (7, order) and w.dtype == u.dtype == F64
    for i in range(7):
        a, b = t[i], t[i + 1]
        nodes = [t[i - j] for j in range(min(order, i + 1))]
        for j, tj in enumerate(nodes):
            others = [tm for m, tm in enumerate(nodes) if m != j]
            roots = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
            lj = roots / np.prod([tj - tm for tm in others])
            big = lj.integ()
            mom = (np.polynomial.Polynomial([b, -1.0]) * lj).integ()
            assert float(w[i, j]) == pytest.approx(big(b) - big(a), rel=1e-12, abs=1e-15)
            assert float(u[i, j]) == pytest.approx(mom(b) - mom(a), rel=1e-12, abs=1e-15)
        assert (w[i, len(nodes):] == 0).all() and (u[i, len(nodes):] == 0).all()
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        multistep_weights(times, 0)
