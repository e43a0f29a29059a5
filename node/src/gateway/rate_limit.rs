//! A token bucket per player: `rate` inputs per second on average, bursts of
//! up to `burst`. Pure (time is passed in), so it is tested without clocks.

#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: f64,
}

impl TokenBucket {
    /// A full bucket at time `now` (seconds on any monotonic scale).
    pub fn new(rate: f64, burst: f64, now: f64) -> Self {
        let burst = burst.max(1.0);
        Self { rate: rate.max(0.0), burst, tokens: burst, last: now }
    }

    /// Takes one token if there is one. Time going backwards refills nothing.
    pub fn allow(&mut self, now: f64) -> bool {
        let elapsed = (now - self.last).max(0.0);
        if elapsed.is_finite() {
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_holds_the_average_rate() {
        let mut b = TokenBucket::new(10.0, 5.0, 0.0);
        let burst = (0..100).filter(|_| b.allow(0.0)).count();
        assert_eq!(burst, 5, "a full bucket allows exactly the burst");
        assert!(!b.allow(0.05), "half a token is not a token");
        assert!(b.allow(0.1));
        // Over ten seconds of flooding, about rate * 10 get through.
        let mut ok = 0;
        for i in 0..10_000 {
            if b.allow(0.1 + f64::from(i) * 0.001) {
                ok += 1;
            }
        }
        assert!((99..=101).contains(&ok), "{ok}");
    }

    #[test]
    fn clock_going_backwards_or_idle_never_exceeds_burst() {
        let mut b = TokenBucket::new(10.0, 3.0, 100.0);
        assert!(b.allow(100.0));
        assert!(b.allow(50.0) && b.allow(50.0), "tokens left from the burst");
        assert!(!b.allow(50.0), "going back in time refills nothing");
        let after_idle = (0..10).filter(|_| b.allow(1e9)).count();
        assert_eq!(after_idle, 3, "a long idle refills to the burst, no more");
    }
}
