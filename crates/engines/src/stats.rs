//! The statistics the engines share: mean and standard deviation, written once.

/// Mean and standard deviation of `xs` with `ddof` (0: population, 1: sample), by the two-pass
/// formula: `mean = sum / n`, `sd = sqrt(sum((x - mean)^2) / (n - ddof))`. NaN when
/// `xs.len() <= ddof`.
pub fn mean_sd<'a>(
    xs: impl IntoIterator<Item = &'a f64, IntoIter: Clone>,
    ddof: usize,
) -> (f64, f64) {
    let xs = xs.into_iter();
    let n = xs.clone().count() as f64;
    let mean = xs.clone().sum::<f64>() / n;
    let var = xs.map(|x| (x - mean).powi(2)).sum::<f64>() / (n - ddof as f64);
    (mean, var.sqrt())
}

/// [`mean_sd`] with the deviations taken from the first value, so that a constant series gives
/// exactly 0 (the plain formula can leave a rounding residue there). The Features engine's
/// indicators use it (a flat market must give a volatility of exactly 0). `xs` must not be
/// empty.
pub fn mean_sd_from_first<'a>(
    xs: impl IntoIterator<Item = &'a f64, IntoIter: Clone>,
    ddof: usize,
) -> (f64, f64) {
    let xs = xs.into_iter();
    let first = *xs.clone().next().expect("not empty");
    let n = xs.clone().count();
    let mean_d = xs.clone().map(|x| x - first).sum::<f64>() / n as f64;
    let var = xs.map(|x| (x - first - mean_d).powi(2)).sum::<f64>() / (n - ddof) as f64;
    (first + mean_d, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_and_sample() {
        let x = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean_sd(&x, 0), (5.0, 2.0));
        let (m, s) = mean_sd(&x, 1);
        assert_eq!(m, 5.0);
        assert!((s - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_sd_from_first(&x, 0), (5.0, 2.0));
    }

    #[test]
    fn a_constant_series_has_no_spread_from_its_first_value() {
        let x = [0.1 + 0.2; 7];
        assert_eq!(mean_sd_from_first(&x, 1).1, 0.0);
        assert!(mean_sd(&x[..1], 1).1.is_nan());
    }
}
