//! What tenants submit: GEMM/GEMV ops `C = act(alpha·op(A)·op(B) + beta·C + bias)` on their
//! buffers, grouped into requests.

use crate::abi::{Activation, BiasMode};
use crate::round::Plan;
use crate::runtime::Buffer;

/// A row-major matrix stored in a buffer: `rows × cols` elements starting at `offset`, rows `ld`
/// elements apart. [`Mat::t`] makes an op use its transpose.
#[derive(Clone, Debug)]
pub struct Mat {
    pub(crate) buf: Buffer,
    pub(crate) offset: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) ld: usize,
    pub(crate) trans: bool,
}

impl Mat {
    /// The `rows × cols` matrix at the start of `buf`, rows contiguous (`ld = cols`).
    pub fn new(buf: &Buffer, rows: usize, cols: usize) -> Mat {
        Mat { buf: buf.clone(), offset: 0, rows, cols, ld: cols, trans: false }
    }

    /// Rows `ld` elements apart (a sub-matrix of a wider one).
    pub fn ld(mut self, ld: usize) -> Mat {
        self.ld = ld;
        self
    }

    /// Starts at element `offset` of the buffer.
    pub fn at(mut self, offset: usize) -> Mat {
        self.offset = offset;
        self
    }

    /// The op uses this matrix transposed (`cols × rows`).
    pub fn t(mut self) -> Mat {
        self.trans = !self.trans;
        self
    }

    /// Shape as the op sees it.
    pub(crate) fn op_shape(&self) -> (usize, usize) {
        if self.trans { (self.cols, self.rows) } else { (self.rows, self.cols) }
    }
}

/// One GEMM/GEMV: `C = act(alpha·op(A)·op(B) + beta·C + bias)`.
#[derive(Clone, Debug)]
pub struct Op {
    pub(crate) a: Mat,
    pub(crate) b: Mat,
    pub(crate) c: Mat,
    pub(crate) bias: Option<(Buffer, usize, BiasMode)>,
    pub(crate) alpha: f32,
    pub(crate) beta: f32,
    pub(crate) activation: Activation,
    pub(crate) plan: Option<Plan>,
}

impl Op {
    /// `C = op(A)·op(B)` (alpha 1, beta 0: `C` is only written).
    pub fn gemm(a: Mat, b: Mat, c: Mat) -> Op {
        Op { a, b, c, bias: None, alpha: 1.0, beta: 0.0, activation: Activation::None, plan: None }
    }

    /// Scales the product.
    pub fn alpha(mut self, alpha: f32) -> Op {
        self.alpha = alpha;
        self
    }

    /// Adds `beta ·` the old `C` (0: `C` is not read).
    pub fn beta(mut self, beta: f32) -> Op {
        self.beta = beta;
        self
    }

    /// Applies ReLU last.
    pub fn relu(mut self) -> Op {
        self.activation = Activation::Relu;
        self
    }

    /// Adds `bias[row]` to every row (length `m`, from element `offset` of `buf`).
    pub fn bias_rows(mut self, buf: &Buffer, offset: usize) -> Op {
        self.bias = Some((buf.clone(), offset, BiasMode::Row));
        self
    }

    /// Adds `bias[col]` to every column (length `n`, from element `offset` of `buf`).
    pub fn bias_cols(mut self, buf: &Buffer, offset: usize) -> Op {
        self.bias = Some((buf.clone(), offset, BiasMode::Col));
        self
    }

    /// Runs with this tile kind and k-split instead of the chooser's pick (tuning).
    pub fn tile(mut self, plan: Plan) -> Op {
        self.plan = Some(plan);
        self
    }
}

/// Independent ops submitted together (e.g. one layer's GEMMs); they run in the same round, so
/// none may write what another reads or writes.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub(crate) ops: Vec<Op>,
}

impl Request {
    /// An empty request.
    pub fn new() -> Request {
        Request::default()
    }

    /// Adds an op.
    pub fn op(mut self, op: Op) -> Request {
        self.ops.push(op);
        self
    }

    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the request holds no op.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl From<Op> for Request {
    fn from(op: Op) -> Request {
        Request { ops: vec![op] }
    }
}
