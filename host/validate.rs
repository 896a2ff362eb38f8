//! Validation: the one place where user ops become descriptors.
//!
//! `check_request` ([`check`] from outside the crate) turns a tenant's [`Request`] into [`Checked`] ops, or returns the first
//! rule it breaks. A `Checked` value can only be built here, and the scheduler only accepts
//! `Checked` ops, so no unchecked work can reach a backend through the runtime. Every rule has a
//! distinct [`Error`] variant; `tests/validation.rs` exercises each.

use std::ops::Range;

use crate::abi::{BiasMode, MAX_DIM, ProblemDesc, TileKind, flags, matrix_extent};
use crate::error::{Error, Result};
use crate::round::{Plan, problem};
use crate::runtime::{Buffer, Mat, Op, Request, TenantState};

/// A value that passed validation. Only this module constructs it.
#[derive(Debug)]
pub struct Checked<T>(T);

impl<T> Checked<T> {
    /// The validated value.
    pub fn get(&self) -> &T {
        &self.0
    }
}

/// An op ready for a round.
#[derive(Debug)]
pub struct CheckedOp {
    /// Descriptor with absolute device addresses (tile kind not yet chosen).
    pub desc: ProblemDesc,
    /// Tile override from the op.
    pub plan: Option<Plan>,
    /// Buffers read (A, B, bias, and C when `beta != 0`); held so they outlive the round.
    pub reads: smallvec::SmallVec<[Buffer; 4]>,
    /// The buffer written (C).
    pub write: Buffer,
    /// Size in reference tiles (128×128 outputs; 32-row GEMV tiles): the unit of per-tenant
    /// round caps.
    pub ref_tiles: usize,
}

/// Element range `[start, end)` a matrix occupies in its buffer, and its device address.
fn span(m: &Mat) -> (Range<usize>, u64) {
    let ext = matrix_extent(m.rows as u32, m.cols as u32, m.ld as u32) as usize;
    (m.offset..m.offset + ext, m.buf.addr() + m.offset as u64 * 4)
}

fn overlaps(a: &(u64, Range<usize>), b: &(u64, Range<usize>)) -> bool {
    a.0 == b.0 && a.1.start < b.1.end && b.1.start < a.1.end
}

/// Checks one op of `tenant`'s request (index `i`); its buffer handles move into the checked op
/// (no reference count changes on the submitting thread's critical path).
fn check_op(tenant: &TenantState, i: usize, op: Op) -> Result<CheckedOp> {
    let (desc, ref_tiles) = validate_op(tenant, i, &op)?;
    Ok(into_checked(op, desc, ref_tiles))
}

/// `op` checked, as its descriptor (absolute addresses, tenant set) and size in reference tiles.
fn validate_op(tenant: &TenantState, i: usize, op: &Op) -> Result<(ProblemDesc, usize)> {
    let (m, k) = op.a.op_shape();
    let (kb, n) = op.b.op_shape();
    let (cm, cn) = (op.c.rows, op.c.cols);
    let limit = MAX_DIM as usize;
    for v in [m, n, k, kb, cm, cn] {
        if v == 0 || v > limit {
            return Err(Error::BadDims { op: i, m, n, k, limit: MAX_DIM });
        }
    }
    if op.c.trans {
        return Err(Error::TransposedOutput { op: i });
    }
    if kb != k || (cm, cn) != (m, n) {
        return Err(Error::ShapeMismatch { op: i, a: (m, k), b: (kb, n), c: (cm, cn) });
    }

    if !op.alpha.is_finite() || !op.beta.is_finite() {
        return Err(Error::NonFiniteScalar { op: i, alpha: op.alpha, beta: op.beta });
    }
    // A, B, C and the bias, on the stack: this runs on every request's critical path.
    let mut spans: [(char, (u64, Range<usize>)); 4] = Default::default();
    let mut n_spans = 0;
    for (name, mat) in [('A', &op.a), ('B', &op.b), ('C', &op.c)] {
        if !mat.buf.belongs_to(tenant) {
            return Err(Error::ForeignBuffer {
                op: i,
                matrix: name,
                owner: mat.buf.owner_for(tenant),
                tenant: tenant.name.to_string(),
            });
        }
        if mat.ld < mat.cols {
            return Err(Error::BadLeadingDim { op: i, matrix: name, ld: mat.ld, row_len: mat.cols });
        }
        if mat.ld > u32::MAX as usize {
            return Err(Error::BadDims { op: i, m, n, k, limit: MAX_DIM });
        }
        let (r, _) = span(mat);
        if r.end > mat.buf.len() {
            return Err(Error::MatrixOutOfBuffer {
                op: i,
                matrix: name,
                offset: mat.offset,
                needed: (r.end - r.start) as u64,
                len: mat.buf.len(),
            });
        }
        spans[n_spans] = (name, (mat.buf.id(), r));
        n_spans += 1;
    }
    let mut bias_addr = 0;
    let mut bias_mode = BiasMode::None;
    if let Some((buf, offset, mode)) = &op.bias {
        let expected = if *mode == BiasMode::Row { m } else { n };
        if !buf.belongs_to(tenant) {
            return Err(Error::ForeignBuffer {
                op: i,
                matrix: 'b',
                owner: buf.owner_for(tenant),
                tenant: tenant.name.to_string(),
            });
        }
        if offset + expected > buf.len() {
            return Err(Error::BadBias { op: i, len: buf.len().saturating_sub(*offset), expected });
        }
        spans[n_spans] = ('b', (buf.id(), *offset..offset + expected));
        n_spans += 1;
        bias_addr = buf.addr() + *offset as u64 * 4;
        bias_mode = *mode;
    }
    let c = spans[2].1.clone();
    for (name, s) in &spans[..n_spans] {
        if *name != 'C' && overlaps(&c, s) {
            return Err(Error::OutputOverlapsInput { op: i, matrix: *name });
        }
    }
    let fl = if op.a.trans { flags::TRANS_A } else { 0 } | if op.b.trans { flags::TRANS_B } else { 0 };
    if let Some(p) = op.plan
        && !p.kind.supports(n as u32, fl)
    {
        return Err(Error::TileKindUnsupported { op: i, kind: p.kind.name() });
    }
    let mut desc = problem(
        (span(&op.a).1, span(&op.b).1, span(&op.c).1, bias_addr),
        (m as u32, n as u32, k as u32),
        (op.a.ld as u32, op.b.ld as u32, op.c.ld as u32),
        (op.alpha, op.beta),
        fl,
        op.activation,
        bias_mode,
    );
    desc.tenant = tenant.id;
    let ref_tiles =
        if TileKind::Gemv32.supports(n as u32, fl) { m.div_ceil(32) } else { m.div_ceil(128) * n.div_ceil(128) };
    Ok((desc, ref_tiles))
}

/// The checked op: `op`'s buffer handles move into it.
fn into_checked(op: Op, desc: ProblemDesc, ref_tiles: usize) -> CheckedOp {
    let Op { a, b, c, bias, beta, plan, .. } = op;
    let mut reads = smallvec::smallvec![a.buf, b.buf];
    if let Some((b, _, _)) = bias {
        reads.push(b);
    }
    if beta != 0.0 {
        reads.push(c.buf.clone());
    }
    CheckedOp { desc, plan, reads, write: c.buf, ref_tiles }
}

/// What a lone op's validation depends on besides the tenant's removal (checked before
/// validation): the tenant, the op's fields and its buffers' identities. A buffer's tenant,
/// address and length never change, and the keys of tenants and buffers never repeat in a
/// process, so an op alike in all of these checks out the same.
#[derive(Clone, Copy, PartialEq)]
struct OpKey {
    tenant: (u64, u32),
    /// A, B, C and the bias (none: `(0, 0)`; buffer ids start at 1).
    bufs: [(u64, u64); 4],
    /// Offset, rows, columns, leading dimension and transposition of A, B, C.
    mats: [(usize, usize, usize, usize, bool); 3],
    bias: Option<(usize, BiasMode)>,
    scalars: (u32, u32),
    activation: crate::abi::Activation,
    plan: Option<Plan>,
}

impl OpKey {
    fn of(tenant: &TenantState, op: &Op) -> OpKey {
        let mat = |m: &Mat| (m.offset, m.rows, m.cols, m.ld, m.trans);
        OpKey {
            tenant: (tenant.rt, tenant.id),
            bufs: [op.a.buf.key(), op.b.buf.key(), op.c.buf.key(), op.bias.as_ref().map_or((0, 0), |b| b.0.key())],
            mats: [mat(&op.a), mat(&op.b), mat(&op.c)],
            bias: op.bias.as_ref().map(|b| (b.1, b.2)),
            scalars: (op.alpha.to_bits(), op.beta.to_bits()),
            activation: op.activation,
            plan: op.plan,
        }
    }
}

/// The last lone op this thread validated and what it checked out as.
struct OpMemo {
    key: OpKey,
    desc: ProblemDesc,
    ref_tiles: usize,
}

thread_local! {
    static LAST_OP: std::cell::RefCell<Option<OpMemo>> = const { std::cell::RefCell::new(None) };
}

/// Validates `req` as `tenant` would submit it, without queueing it (what `submit` does first).
pub fn check(tenant: &crate::runtime::Tenant, req: Request) -> Result<Vec<Checked<CheckedOp>>> {
    check_request(tenant.state(), req)
}

/// Validates `req` for `tenant`: every op on its own (shapes, ownership, bounds, overlap,
/// scalars, tile override) and the ops against each other (they run concurrently, so none may
/// write a buffer another op of the request touches).
pub(crate) fn check_request(tenant: &TenantState, req: Request) -> Result<Vec<Checked<CheckedOp>>> {
    if req.ops.is_empty() {
        return Err(Error::EmptyRequest);
    }
    if let [op] = &req.ops[..] {
        // A lone op alike the last one this thread validated (an inference loop's next request)
        // checks out the same: its descriptor and size again, no rule re-run.
        let key = OpKey::of(tenant, op);
        let seen = LAST_OP.with_borrow(|m| m.as_ref().filter(|m| m.key == key).map(|m| (m.desc, m.ref_tiles)));
        let (desc, ref_tiles) = match seen {
            Some(v) => v,
            None => {
                let v = validate_op(tenant, 0, op)?;
                LAST_OP.with_borrow_mut(|m| *m = Some(OpMemo { key, desc: v.0, ref_tiles: v.1 }));
                v
            }
        };
        let op = req.ops.into_iter().next().expect("one op");
        return Ok(vec![Checked(into_checked(op, desc, ref_tiles))]);
    }
    // Collected as they will be returned: a request is usually one op, checked on the submitting
    // thread's critical path, and a second pass would move every op again.
    let ops: Vec<Checked<CheckedOp>> =
        req.ops.into_iter().enumerate().map(|(i, op)| check_op(tenant, i, op).map(Checked)).collect::<Result<_>>()?;
    for (i, a) in ops.iter().map(Checked::get).enumerate() {
        for (j, b) in ops.iter().map(Checked::get).enumerate().skip(i + 1) {
            let hits = |w: &Buffer, x: &CheckedOp| x.write.id() == w.id() || x.reads.iter().any(|r| r.id() == w.id());
            if hits(&a.write, b) || hits(&b.write, a) {
                return Err(Error::ConflictingOps { first: i, second: j });
            }
        }
    }
    Ok(ops)
}
