//! A send rate limit in messages per second: each send takes the next free slot on an evenly
//! spaced schedule and waits for it (tokio's clock, so tests can move it).

use std::sync::Mutex;

use tokio::time::{Duration, Instant};

pub struct RateLimit {
    every: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// `per_second` messages per second at most; `None` for a rate that is not positive.
    pub fn new(per_second: f64) -> Option<RateLimit> {
        (per_second.is_finite() && per_second > 0.0).then(|| RateLimit {
            every: Duration::from_secs_f64(1.0 / per_second),
            next: Mutex::new(None),
        })
    }

    /// The rate, in messages per second.
    pub fn per_second(&self) -> f64 {
        1.0 / self.every.as_secs_f64()
    }

    /// Waits for this send's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.every);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn thirty_sends_at_ten_per_second_take_three_seconds() {
        let limit = RateLimit::new(10.0).unwrap();
        let start = Instant::now();
        for _ in 0..30 {
            limit.acquire().await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(2900), "{took:?}");
        assert!(took < Duration::from_millis(3000), "{took:?}");
        assert!(RateLimit::new(0.0).is_none());
        assert!(RateLimit::new(f64::NAN).is_none());
    }
}
