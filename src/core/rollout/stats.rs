//! The statistics of the analysis: the normal quantile and the Wilson score lower bound.
//!
//! The lower bound is one-sided: at confidence `c`, the true failure rate is above the bound
//! with probability `c`, so the quantile is Φ⁻¹(c) (1.645 at 95%), not the two-sided Φ⁻¹((1+c)/2).
//! A rollout acts when even this pessimistic-for-the-candidate estimate exceeds the policy's
//! maximum, which keeps a few unlucky early devices from stopping a good release.

/// Peter J. Acklam's rational approximation of the inverse normal CDF (relative error below
/// 1.15e-9 over the whole open interval), coefficients of the central region.
const CENTRAL_NUMERATOR: [f64; 6] = [
    -3.969_683_028_665_376e1,
    2.209_460_984_245_205e2,
    -2.759_285_104_469_687e2,
    1.383_577_518_672_69e2,
    -3.066_479_806_614_716e1,
    2.506_628_277_459_239,
];
const CENTRAL_DENOMINATOR: [f64; 5] = [
    -5.447_609_879_822_406e1,
    1.615_858_368_580_409e2,
    -1.556_989_798_598_866e2,
    6.680_131_188_771_972e1,
    -1.328_068_155_288_572e1,
];
/// Coefficients of the tails.
const TAIL_NUMERATOR: [f64; 6] = [
    -7.784_894_002_430_293e-3,
    -3.223_964_580_411_365e-1,
    -2.400_758_277_161_838,
    -2.549_732_539_343_734,
    4.374_664_141_464_968,
    2.938_163_982_698_783,
];
const TAIL_DENOMINATOR: [f64; 4] = [
    7.784_695_709_041_462e-3,
    3.224_671_290_700_398e-1,
    2.445_134_137_142_996,
    3.754_408_661_907_416,
];
/// Below this probability (and above its complement) the tail formula applies.
const TAIL_START: f64 = 0.024_25;

/// Evaluates a polynomial with `coefficients` from the highest degree down (Horner).
fn horner(coefficients: &[f64], x: f64) -> f64 {
    coefficients.iter().fold(0.0, |sum, c| sum * x + c)
}

/// Φ⁻¹(p): the z such that a standard normal variable is below z with probability `p`.
/// `None` unless `0 < p < 1`.
pub fn inverse_normal_cdf(p: f64) -> Option<f64> {
    if !(p > 0.0 && p < 1.0) {
        return None;
    }
    let tail = |q: f64| horner(&TAIL_NUMERATOR, q) / (horner(&TAIL_DENOMINATOR, q) * q + 1.0);
    Some(if p < TAIL_START {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - TAIL_START {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        horner(&CENTRAL_NUMERATOR, r) * q / (horner(&CENTRAL_DENOMINATOR, r) * r + 1.0)
    })
}

/// The Wilson score lower bound of a proportion: `failures` out of `attempts`, at the normal
/// quantile `z` (see [`inverse_normal_cdf`]). 0 with no attempts. `None` when `failures`
/// exceeds `attempts` or `z` is negative or not finite.
pub fn wilson_lower_bound(failures: u64, attempts: u64, z: f64) -> Option<f64> {
    if failures > attempts || !z.is_finite() || z < 0.0 {
        return None;
    }
    if attempts == 0 {
        return Some(0.0);
    }
    let n = attempts as f64;
    let p = failures as f64 / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - spread) / (1.0 + z2 / n)).clamp(0.0, 1.0))
}
