//! Sessions at once per next hop (a smart host list, or an MX host set):
//! a semaphore per key, made when first needed and dropped when nobody
//! holds or waits for it, so the map never grows beyond what is in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per-destination limits.
#[derive(Debug)]
pub struct Limiter {
    max: usize,
    map: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A session slot for one destination; dropped, it frees the slot (and
/// the destination's entry when it was the last).
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    key: String,
    limiter: Arc<Limiter>,
}

impl Limiter {
    /// At most `max` sessions per destination.
    pub fn new(max: usize) -> Arc<Limiter> {
        Arc::new(Limiter {
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for a slot for `key`.
    pub async fn acquire(self: &Arc<Self>, key: &str) -> Slot {
        let sem = {
            let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(key.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
                .clone()
        };
        // The semaphore is never closed.
        let permit = sem.acquire_owned().await.ok();
        Slot {
            permit,
            key: key.to_string(),
            limiter: self.clone(),
        }
    }

    /// Destinations with an entry (for tests and status).
    pub fn destinations(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut m = self.limiter.map.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it, and every permit is back: nobody uses it.
        if let Some(sem) = m.get(&self.key)
            && Arc::strong_count(sem) == 1
            && sem.available_permits() == self.limiter.max
        {
            m.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn limits_per_key_and_forgets_idle_keys() {
        let l = Limiter::new(2);
        let a1 = l.acquire("a").await;
        let a2 = l.acquire("a").await;
        let b = l.acquire("b").await;
        // A third for "a" waits until one is freed.
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire("a").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(a1);
        let a3 = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(l.destinations(), 2);
        drop((a2, a3, b));
        assert_eq!(l.destinations(), 0, "idle destinations are forgotten");
        for i in 0..1000 {
            drop(l.acquire(&format!("d{i}")).await);
        }
        assert_eq!(l.destinations(), 0);
    }
}
