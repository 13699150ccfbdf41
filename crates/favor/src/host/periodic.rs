//! The separable sums of `ExactRelativePerformer`'s periodic attention
//! (`relperf_positional::periodic`), one `(sample, head)` slice per task,
//! forward and backward.
//!
//! Per slice, with `phi(K), phi(Q) [n, m]`, `V1 = [V, 1] [n, e]`, the axis
//! bases `psi_y [height, p]`, `psi_x [width, p]` and the query vectors
//! `u_y [height, p]`, `u_x [width, p]`, `a0` (the class token's):
//!
//! ```text
//! T[y, q]  = sum_x psi_x[x, q] phi(k_yx) (x) v1_yx          [m e] each
//! S[p, q]  = sum_y psi_y[y, p] T[y, q]  (+ phi(k_0) (x) v1_0 at (0, 0))
//! R[x, p]  = sum_q u_x[x, q] S[p, q]
//! out_yx   = sum_{p, m} u_y[y, p] phi(q_yx)_m R[x, p, m, :]
//! out_0    = a0 sum_m phi(q_0)_m S[0, 0, m, :]
//! ```
//!
//! all of them small GEMMs on views of the slice (no copies of the
//! `[b, h, n, ...]` tensors); the plain ops build the same sums from
//! broadcast products, permutes and batched products over the whole batch.

use ndarray::ShapeBuilder;

use super::*;

/// One call's sizes: `slices = b h`, an image of `height x width` pixels
/// after the class token, `p` basis functions per axis, `m` features, `e`
/// value channels (the ones column included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeriodicDims {
    slices: usize,
    heads: usize,
    height: usize,
    width: usize,
    p: usize,
    m: usize,
    e: usize,
}

/// One head's query vectors: `u_y [height, p]`, `u_x [width, p]` and the
/// class token's two axis entries whose product is `a0`.
#[derive(Debug, Clone)]
struct HeadU {
    uy: Vec<f32>,
    ux: Vec<f32>,
    a_y: f32,
    a_x: f32,
}

/// The gradients of one slice with respect to its head's `u`.
struct HeadGrad {
    head: usize,
    uy: Vec<f32>,
    ux: Vec<f32>,
    a0: f32,
}

fn gemm(
    a: &ArrayView2<'_, f32>,
    b: &ArrayView2<'_, f32>,
    beta: f32,
    c: &mut ArrayViewMut2<'_, f32>,
) {
    general_mat_mul(1.0, a, b, beta, c);
}

fn view(s: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), &s[..rows * cols]).expect("slice holds the matrix")
}

fn view_mut(s: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), &mut s[..rows * cols]).expect("slice holds the matrix")
}

impl PeriodicDims {
    fn n(&self) -> usize {
        1 + self.height * self.width
    }

    fn me(&self) -> usize {
        self.m * self.e
    }

    /// Head `head`'s query vectors out of `u [heads, n, 2, p]`: rows read
    /// the first pixel of each row (axis y), columns the first row's pixels
    /// (axis x).
    fn head_u(&self, u: &[f32], head: usize) -> HeadU {
        let (n, p) = (self.n(), self.p);
        let at = |t: usize, a: usize| ((head * n + t) * 2 + a) * p;
        let mut uy = Vec::with_capacity(self.height * p);
        for y in 0..self.height {
            let o = at(1 + y * self.width, 0);
            uy.extend_from_slice(&u[o..o + p]);
        }
        let mut ux = Vec::with_capacity(self.width * p);
        for x in 0..self.width {
            let o = at(1 + x, 1);
            ux.extend_from_slice(&u[o..o + p]);
        }
        HeadU {
            uy,
            ux,
            a_y: u[at(0, 0)],
            a_x: u[at(0, 1)],
        }
    }

    /// `S [p, p, m e]` of one slice.
    fn context(&self, kf: &[f32], v: &[f32], psi_y: &[f32], psi_x: &[f32]) -> Vec<f32> {
        let (hh, ww, p, m, e, me) = (self.height, self.width, self.p, self.m, self.e, self.me());
        let mut t = vec![0.0f32; hh * p * me];
        let mut kv = vec![0.0f32; ww * me];
        let psx = view(psi_x, ww, p);
        for y in 0..hh {
            for x in 0..ww {
                let tok = 1 + y * ww + x;
                outer(
                    &kf[tok * m..(tok + 1) * m],
                    &v[tok * e..(tok + 1) * e],
                    &mut kv[x * me..(x + 1) * me],
                );
            }
            gemm(
                &psx.t(),
                &view(&kv, ww, me),
                0.0,
                &mut view_mut(&mut t[y * p * me..], p, me),
            );
        }
        let mut s = vec![0.0f32; p * p * me];
        gemm(
            &view(psi_y, hh, p).t(),
            &view(&t, hh, p * me),
            0.0,
            &mut view_mut(&mut s, p, p * me),
        );
        let mut class = vec![0.0f32; me];
        outer(&kf[..m], &v[..e], &mut class);
        s[..me].iter_mut().zip(&class).for_each(|(s, c)| *s += c);
        s
    }

    /// `R [width, p, m e]` from `S`.
    fn readout(&self, s: &[f32], ux: &[f32]) -> Vec<f32> {
        let (ww, p, me) = (self.width, self.p, self.me());
        let mut r = vec![0.0f32; ww * p * me];
        let uxv = view(ux, ww, p);
        for py in 0..p {
            let mut rp =
                ArrayViewMut2::from_shape((ww, me).strides((p * me, 1)), &mut r[py * me..])
                    .expect("R holds the rows");
            gemm(&uxv, &view(&s[py * p * me..], p, me), 0.0, &mut rp);
        }
        r
    }

    /// `Q_x [height, p, m]`: `u_y[y, p] phi(q_yx)` for column `x`.
    fn column_queries(&self, qf: &[f32], uy: &[f32], x: usize, qx: &mut [f32]) {
        let (ww, p, m) = (self.width, self.p, self.m);
        for y in 0..self.height {
            let q = &qf[(1 + y * ww + x) * m..][..m];
            for py in 0..p {
                let u = uy[y * p + py];
                qx[(y * p + py) * m..][..m]
                    .iter_mut()
                    .zip(q)
                    .for_each(|(o, q)| *o = u * q);
            }
        }
    }

    /// One slice's unnormalised output `[n, e]` into `out`; returns `S`.
    fn forward_slice(
        &self,
        (qf, kf, v): (&[f32], &[f32], &[f32]),
        u: &HeadU,
        (psi_y, psi_x): (&[f32], &[f32]),
        out: &mut [f32],
    ) -> Vec<f32> {
        let (hh, ww, p, m, e, me) = (self.height, self.width, self.p, self.m, self.e, self.me());
        let s = self.context(kf, v, psi_y, psi_x);
        let r = self.readout(&s, &u.ux);
        let mut qx = vec![0.0f32; hh * p * m];
        for x in 0..ww {
            self.column_queries(qf, &u.uy, x, &mut qx);
            let mut ox =
                ArrayViewMut2::from_shape((hh, e).strides((ww * e, 1)), &mut out[(1 + x) * e..])
                    .expect("the output holds the column");
            gemm(
                &view(&qx, hh, p * m),
                &view(&r[x * p * me..], p * m, e),
                0.0,
                &mut ox,
            );
        }
        let a0 = u.a_y * u.a_x;
        for (c, o) in out[..e].iter_mut().enumerate() {
            *o = a0 * (0..m).map(|k| qf[k] * s[k * e + c]).sum::<f32>();
        }
        s
    }

    /// One slice's gradients with respect to `phi(Q)`, `phi(K)`, `V1` (into
    /// `dq`, `dk`, `dv`) and its head's `u`, given the output's `g` and the
    /// forward's `S`.
    #[allow(clippy::too_many_arguments)]
    fn backward_slice(
        &self,
        (qf, kf, v): (&[f32], &[f32], &[f32]),
        u: &HeadU,
        (psi_y, psi_x): (&[f32], &[f32]),
        s: &[f32],
        g: &[f32],
        (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    ) -> (Vec<f32>, Vec<f32>, f32) {
        let (hh, ww, p, m, e, me) = (self.height, self.width, self.p, self.m, self.e, self.me());
        let r = self.readout(s, &u.ux);
        // the pixels' read-out: dQ_x = G_x R_x^T, dR_x = Q_x^T G_x
        let mut dr = vec![0.0f32; ww * p * me];
        let mut duy = vec![0.0f32; hh * p];
        let mut qx = vec![0.0f32; hh * p * m];
        let mut dqx = vec![0.0f32; hh * p * m];
        for x in 0..ww {
            self.column_queries(qf, &u.uy, x, &mut qx);
            let gx = ArrayView2::from_shape((hh, e).strides((ww * e, 1)), &g[(1 + x) * e..])
                .expect("the gradient holds the column");
            let rx = view(&r[x * p * me..], p * m, e);
            gemm(&gx, &rx.t(), 0.0, &mut view_mut(&mut dqx, hh, p * m));
            gemm(
                &view(&qx, hh, p * m).t(),
                &gx,
                0.0,
                &mut view_mut(&mut dr[x * p * me..], p * m, e),
            );
            for y in 0..hh {
                let tok = 1 + y * ww + x;
                let q = &qf[tok * m..][..m];
                let dqt = &mut dq[tok * m..][..m];
                for py in 0..p {
                    let d = &dqx[(y * p + py) * m..][..m];
                    let uyp = u.uy[y * p + py];
                    let mut dot = 0.0f32;
                    for k in 0..m {
                        dqt[k] += uyp * d[k];
                        dot += q[k] * d[k];
                    }
                    duy[y * p + py] += dot;
                }
            }
        }
        // the class token's read-out
        let a0 = u.a_y * u.a_x;
        let g0 = &g[..e];
        let mut ds = vec![0.0f32; p * p * me];
        let mut da0 = 0.0f32;
        for k in 0..m {
            let sg: f32 = (0..e).map(|c| s[k * e + c] * g0[c]).sum();
            dq[k] += a0 * sg;
            da0 += qf[k] * sg;
            for c in 0..e {
                ds[k * e + c] += a0 * qf[k] * g0[c];
            }
        }
        // R = u_x S: dS[py] += u_x^T dR[:, py], du_x += dR[:, py] S[py]^T
        let mut dux = vec![0.0f32; ww * p];
        let uxv = view(&u.ux, ww, p);
        for py in 0..p {
            let drp = ArrayView2::from_shape((ww, me).strides((p * me, 1)), &dr[py * me..])
                .expect("dR holds the rows");
            gemm(
                &uxv.t(),
                &drp,
                1.0,
                &mut view_mut(&mut ds[py * p * me..], p, me),
            );
            gemm(
                &drp,
                &view(&s[py * p * me..], p, me).t(),
                1.0,
                &mut view_mut(&mut dux, ww, p),
            );
        }
        // the class token's key-value at S[0, 0]
        for k in 0..m {
            dk[k] += (0..e).map(|c| ds[k * e + c] * v[c]).sum::<f32>();
        }
        for c in 0..e {
            dv[c] += (0..m).map(|k| ds[k * e + c] * kf[k]).sum::<f32>();
        }
        // S = psi_y^T T: dT = psi_y dS; T[y] = psi_x^T KV_y: dKV_y = psi_x dT[y]
        let mut dt = vec![0.0f32; hh * p * me];
        gemm(
            &view(psi_y, hh, p),
            &view(&ds, p, p * me),
            0.0,
            &mut view_mut(&mut dt, hh, p * me),
        );
        let psx = view(psi_x, ww, p);
        let mut dkv = vec![0.0f32; ww * me];
        for y in 0..hh {
            gemm(
                &psx,
                &view(&dt[y * p * me..], p, me),
                0.0,
                &mut view_mut(&mut dkv, ww, me),
            );
            for x in 0..ww {
                let tok = 1 + y * ww + x;
                let d = &dkv[x * me..(x + 1) * me];
                let (kt, vt) = (&kf[tok * m..][..m], &v[tok * e..][..e]);
                for k in 0..m {
                    let row = &d[k * e..(k + 1) * e];
                    dk[tok * m + k] += row.iter().zip(vt).map(|(a, b)| a * b).sum::<f32>();
                    dv[tok * e..(tok + 1) * e]
                        .iter_mut()
                        .zip(row)
                        .for_each(|(o, a)| *o += a * kt[k]);
                }
            }
        }
        (duy, dux, da0)
    }

    fn heads_u(&self, u: &[f32]) -> Vec<HeadU> {
        (0..self.heads).map(|hd| self.head_u(u, hd)).collect()
    }

    /// The output `[b, h, n, e]` and every slice's `S`.
    fn forward(
        &self,
        (qf, kf, v): (&[f32], &[f32], &[f32]),
        u: &[f32],
        psi: (&[f32], &[f32]),
    ) -> (Vec<f32>, Vec<f32>) {
        let (n, m, e, p, me) = (self.n(), self.m, self.e, self.p, self.me());
        let heads = self.heads_u(u);
        let mut out = vec![0.0f32; self.slices * n * e];
        let mut s_all = vec![0.0f32; self.slices * p * p * me];
        out.par_chunks_mut(n * e)
            .zip(s_all.par_chunks_mut(p * p * me))
            .enumerate()
            .for_each(|(i, (o, s_out))| {
                let sl = |w: usize| i * n * w..(i + 1) * n * w;
                let s = self.forward_slice(
                    (&qf[sl(m)], &kf[sl(m)], &v[sl(e)]),
                    &heads[i % self.heads],
                    psi,
                    o,
                );
                s_out.copy_from_slice(&s);
            });
        (out, s_all)
    }

    /// The gradients `[dQ', dK', dV1, du]`.
    fn backward(
        &self,
        (qf, kf, v): (&[f32], &[f32], &[f32]),
        u: &[f32],
        psi: (&[f32], &[f32]),
        s_all: &[f32],
        g: &[f32],
    ) -> [Vec<f32>; 4] {
        let (n, m, e, p, me) = (self.n(), self.m, self.e, self.p, self.me());
        let heads = self.heads_u(u);
        let mut dq = vec![0.0f32; self.slices * n * m];
        let mut dk = vec![0.0f32; self.slices * n * m];
        let mut dv = vec![0.0f32; self.slices * n * e];
        let per_slice: Vec<HeadGrad> = dq
            .par_chunks_mut(n * m)
            .zip(dk.par_chunks_mut(n * m))
            .zip(dv.par_chunks_mut(n * e))
            .enumerate()
            .map(|(i, ((dqs, dks), dvs))| {
                let sl = |w: usize| i * n * w..(i + 1) * n * w;
                let head = i % self.heads;
                let (uy, ux, a0) = self.backward_slice(
                    (&qf[sl(m)], &kf[sl(m)], &v[sl(e)]),
                    &heads[head],
                    psi,
                    &s_all[i * p * p * me..(i + 1) * p * p * me],
                    &g[sl(e)],
                    (dqs, dks, dvs),
                );
                HeadGrad { head, uy, ux, a0 }
            })
            .collect();
        // u [heads, n, 2, p]: rows' and columns' entries, and a0 = a_y a_x
        let mut du = vec![0.0f32; self.heads * n * 2 * p];
        let at = |hd: usize, t: usize, a: usize| ((hd * n + t) * 2 + a) * p;
        for hg in per_slice {
            let hu = &heads[hg.head];
            for y in 0..self.height {
                let o = at(hg.head, 1 + y * self.width, 0);
                du[o..o + p]
                    .iter_mut()
                    .zip(&hg.uy[y * p..(y + 1) * p])
                    .for_each(|(d, g)| *d += g);
            }
            for x in 0..self.width {
                let o = at(hg.head, 1 + x, 1);
                du[o..o + p]
                    .iter_mut()
                    .zip(&hg.ux[x * p..(x + 1) * p])
                    .for_each(|(d, g)| *d += g);
            }
            du[at(hg.head, 0, 0)] += hg.a0 * hu.a_x;
            du[at(hg.head, 0, 1)] += hg.a0 * hu.a_y;
        }
        [dq, dk, dv, du]
    }
}

/// `out[k e + c] = a[k] b[c]`.
fn outer(a: &[f32], b: &[f32], out: &mut [f32]) {
    for (k, &ak) in a.iter().enumerate() {
        out[k * b.len()..(k + 1) * b.len()]
            .iter_mut()
            .zip(b)
            .for_each(|(o, bc)| *o = ak * bc);
    }
}

#[derive(Debug)]
struct PeriodicBackward;

/// The inputs (`phi(Q)`, `phi(K)`, `V1`, `u`), their shapes, the bases and
/// every slice's `S`.
type PeriodicState<I> = (
    PeriodicDims,
    [FloatTensor<I>; 4],
    [Vec<usize>; 4],
    Arc<(Vec<f32>, Vec<f32>, Vec<f32>)>,
);

impl<I: HostIo> Backward<I, 4> for PeriodicBackward {
    type State = PeriodicState<I>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<I>(&ops.node);
        let (dims, [q, k, v, u], shapes, saved) = ops.state;
        let (psi_y, psi_x, s_all) = &*saved;
        let device = I::float_device(&grad);
        let gs = I::with_slice(&q, |q| {
            I::with_slice(&k, |k| {
                I::with_slice(&v, |v| {
                    I::with_slice(&u, |u| {
                        I::with_slice(&grad, |g| {
                            dims.backward((q, k, v), u, (psi_y, psi_x), s_all, g)
                        })
                    })
                })
            })
        });
        register_all::<I>(
            ops.parents.map(|p| p.map(|node| node.id)),
            gs,
            shapes,
            &device,
            grads,
        );
    }
}

/// The sizes of the fused path for these shapes, if it takes them.
fn periodic_dims(
    q: &[usize],
    k: &[usize],
    v: &[usize],
    u: &[usize],
    psi_y: &[usize],
    psi_x: &[usize],
) -> Option<PeriodicDims> {
    let [b, h, n, m] = [q[0], q[1], q[2], q[3]];
    let (height, width, p) = (psi_y[0], psi_x[0], psi_y[1]);
    let fits = k == q
        && v[..3] == q[..3]
        && u == [h, n, 2, p]
        && psi_x[1] == p
        && n == 1 + height * width
        && height > 0
        && width > 0
        && p > 0
        && m > 0
        && v[3] > 0;
    fits.then_some(PeriodicDims {
        slices: b * h,
        heads: h,
        height,
        width,
        p,
        m,
        e: v[3],
    })
}

/// The tensors [`separable_periodic`] takes, handed back where it does not
/// take them.
pub type PeriodicInputs<B> = (
    Tensor<B, 4>,
    Tensor<B, 4>,
    Tensor<B, 4>,
    Tensor<B, 4>,
    Tensor<B, 2>,
    Tensor<B, 2>,
);

/// The unnormalised output `[b, h, n, e]` of `ExactRelativePerformer`'s
/// separable periodic attention (`relperf_positional::periodic`'s
/// `separable_product_reference`) from `phi(Q)`, `phi(K) [b, h, n, m]`,
/// `V1 = [V, 1] [b, h, n, e]`, the query vectors `u [h, n, 2, p]` (shared
/// by the batch) and the axis bases `psi_y [height, p]`, `psi_x [width, p]`
/// (constants), token 0 the class token, then the pixels row-major; forward
/// and backward (with respect to the first four) in one multi-threaded pass
/// per `(sample, head)` slice, when [`is_fused`] and the bases take no
/// gradient; the inputs back otherwise.
pub fn separable_periodic<B: Backend>(
    inputs: PeriodicInputs<B>,
) -> Result<Tensor<B, 4>, PeriodicInputs<B>> {
    let (q, k, v, u, psi_y, psi_x) = inputs;
    let dims = periodic_dims(
        &q.dims(),
        &k.dims(),
        &v.dims(),
        &u.dims(),
        &psi_y.dims(),
        &psi_x.dims(),
    );
    let Some(dims) =
        dims.filter(|_| is_fused::<B>() && !psi_y.is_require_grad() && !psi_x.is_require_grad())
    else {
        return Err((q, k, v, u, psi_y, psi_x));
    };
    let shapes = [
        q.dims().to_vec(),
        k.dims().to_vec(),
        v.dims().to_vec(),
        u.dims().to_vec(),
    ];
    let out_shape = v.dims().to_vec();
    let (py, px) = (host_vec(psi_y), host_vec(psi_x));
    macro_rules! on {
        ($inner:ty) => {
            type I = $inner;
            if TypeId::of::<B>() == TypeId::of::<I>() {
                let [q, k, v, u]: [FloatTensor<I>; 4] =
                    [q, k, v, u].map(|t| same(t.into_primitive().tensor()));
                let (out, _) = I::with_slice(&q, |qs| {
                    I::with_slice(&k, |ks| {
                        I::with_slice(&v, |vs| {
                            I::with_slice(&u, |us| dims.forward((qs, ks, vs), us, (&py, &px)))
                        })
                    })
                });
                let out = I::from_vec(out, &out_shape, &I::float_device(&q));
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<I>>() {
                let [q, k, v, u]: [FloatTensor<Autodiff<I>>; 4] =
                    [q, k, v, u].map(|t| same(t.into_primitive().tensor()));
                let (out, s_all) = I::with_slice(&q.primitive, |qs| {
                    I::with_slice(&k.primitive, |ks| {
                        I::with_slice(&v.primitive, |vs| {
                            I::with_slice(&u.primitive, |us| {
                                dims.forward((qs, ks, vs), us, (&py, &px))
                            })
                        })
                    })
                });
                let out = I::from_vec(out, &out_shape, &I::float_device(&q.primitive));
                let out = match <PeriodicBackward as Backward<I, 4>>::prepare::<NoCheckpointing>(
                    PeriodicBackward,
                    [
                        q.node.clone(),
                        k.node.clone(),
                        v.node.clone(),
                        u.node.clone(),
                    ],
                )
                .compute_bound()
                .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish(
                        (
                            dims,
                            [q.primitive, k.primitive, v.primitive, u.primitive],
                            shapes,
                            Arc::new((py, px, s_all)),
                        ),
                        out,
                    ),
                    OpsKind::UnTracked(prep) => prep.finish(out),
                };
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    let _ = (py, px, shapes, out_shape, dims);
    unreachable!("is_fused holds only for the backends above")
}
