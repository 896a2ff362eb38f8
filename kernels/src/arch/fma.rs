//! Fused multiply-add and small float helpers. Plain `a * b + c` compiles to `mul.rn` + `add.rn`,
//! which ptxas never fuses, so every product-sum goes through [`fma`].

/// `fma.rn.f32`: `a * b + c` with one rounding.
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    core::intrinsics::fmaf32(a, b, c)
}

/// `max.f32` against zero (ReLU). NaN stays NaN, as on the CPU backend.
#[inline(always)]
pub fn relu(x: f32) -> f32 {
    if x < 0.0 { 0.0 } else { x }
}
