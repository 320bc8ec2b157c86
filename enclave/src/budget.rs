//! Spending limits the host cannot lift (docs/design.md §2 invariant 8): the total fee
//! the distribution account pays (fee-bumps and provisioning) and the number of
//! accounts it sponsors, per rolling window, kept in enclave memory. A request reserves
//! its share before any KMS call; a request that then fails gives it back.
//!
//! A restart of the enclave empties the window. That is the host's only way around the
//! limit, and it costs a new attestation and fresh KMS calls, shows in the enclave's
//! start-up log line, and still bounds the spend to one budget per restart.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::stellar::signing_policy::PolicyViolation;

struct Spend {
    id: u64,
    at: Instant,
    fee: i64,
    sponsored: u32,
}

/// The spends in the window, oldest first, and their running totals (kept with them so
/// a check costs the same however many spends the window holds).
#[derive(Default)]
struct Window {
    spends: VecDeque<Spend>,
    fees: i64,
    accounts: u32,
}

impl Window {
    fn push(&mut self, spend: Spend) {
        self.fees = self.fees.saturating_add(spend.fee);
        self.accounts = self.accounts.saturating_add(spend.sponsored);
        self.spends.push_back(spend);
    }

    fn forget(&mut self, spend: &Spend) {
        self.fees = self.fees.saturating_sub(spend.fee);
        self.accounts = self.accounts.saturating_sub(spend.sponsored);
    }

    /// Drops the spends older than `window`.
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(oldest) = self.spends.front() {
            if now.duration_since(oldest.at) < window {
                break;
            }
            if let Some(oldest) = self.spends.pop_front() {
                self.forget(&oldest);
            }
        }
    }

    /// Gives back the spend `id` (a request that failed after reserving).
    fn refund(&mut self, id: u64) {
        if let Some(index) = self.spends.iter().position(|s| s.id == id)
            && let Some(spend) = self.spends.remove(index)
        {
            self.forget(&spend);
        }
    }
}

/// The distribution account's budget for one rolling window.
pub struct SpendingLimits {
    fee_budget: i64,
    max_sponsored: u32,
    window: Duration,
    spent: Mutex<Window>,
    next_id: AtomicU64,
}

/// A share of the budget held by one request; given back on drop unless committed.
pub struct Reservation<'a> {
    limits: &'a SpendingLimits,
    id: Option<u64>,
}

impl Reservation<'_> {
    /// The request signed: the spend stays in the window.
    pub fn commit(mut self) {
        self.id = None;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.limits.lock().refund(id);
        }
    }
}

impl SpendingLimits {
    /// At most `fee_budget` stroops of fees and `max_sponsored` sponsored accounts per
    /// `window`.
    pub fn new(fee_budget: i64, max_sponsored: u32, window: Duration) -> SpendingLimits {
        SpendingLimits {
            fee_budget,
            max_sponsored,
            window,
            spent: Mutex::new(Window::default()),
            next_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.spent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What may still be spent in the current window: fee stroops and sponsorships.
    pub fn remaining(&self) -> (i64, u32) {
        let mut spent = self.lock();
        spent.expire(Instant::now(), self.window);
        (
            self.fee_budget.saturating_sub(spent.fees).max(0),
            self.max_sponsored.saturating_sub(spent.accounts),
        )
    }

    /// Reserves `fee` stroops and `sponsored` accounts, or names the limit it would
    /// break. Nothing is reserved for a request that spends nothing.
    pub fn reserve(&self, fee: i64, sponsored: u32) -> Result<Reservation<'_>, PolicyViolation> {
        // Never below zero: a spend can only use the budget, not add to it.
        let fee = fee.max(0);
        if fee == 0 && sponsored == 0 {
            return Ok(Reservation {
                limits: self,
                id: None,
            });
        }
        let now = Instant::now();
        let mut spent = self.lock();
        spent.expire(now, self.window);
        let (fees, accounts) = (spent.fees, spent.accounts);
        let window = self.window.as_secs();
        if fees.saturating_add(fee) > self.fee_budget {
            return Err(PolicyViolation {
                rule: "fee_budget",
                detail: format!(
                    "a fee of {fee} would bring the distribution account's fees in the last \
                     {window} s to {} stroops, above the budget of {}",
                    fees.saturating_add(fee),
                    self.fee_budget
                ),
            });
        }
        if accounts.saturating_add(sponsored) > self.max_sponsored {
            return Err(PolicyViolation {
                rule: "sponsorship_budget",
                detail: format!(
                    "sponsoring {sponsored} more accounts would bring the last {window} s to {}, \
                     above the limit of {}",
                    accounts.saturating_add(sponsored),
                    self.max_sponsored
                ),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        spent.push(Spend {
            id,
            at: now,
            fee,
            sponsored,
        });
        Ok(Reservation {
            limits: self,
            id: Some(id),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn budgets_hold_across_requests_and_failed_requests_give_back() {
        let limits = SpendingLimits::new(1_000, 3, Duration::from_hours(1));
        limits.reserve(600, 1).unwrap().commit();
        assert_eq!(limits.reserve(401, 0).err().unwrap().rule, "fee_budget");
        assert_eq!(
            limits.reserve(0, 3).err().unwrap().rule,
            "sponsorship_budget"
        );
        // A request that fails after reserving gives its share back.
        drop(limits.reserve(400, 2).unwrap());
        limits.reserve(400, 2).unwrap().commit();
        assert_eq!(limits.reserve(1, 0).err().unwrap().rule, "fee_budget");
        // Spending nothing is never refused.
        limits.reserve(0, 0).unwrap().commit();
    }

    #[test]
    fn the_window_rolls() {
        let limits = SpendingLimits::new(100, 1, Duration::from_millis(30));
        limits.reserve(100, 1).unwrap().commit();
        assert!(limits.reserve(1, 0).is_err());
        std::thread::sleep(Duration::from_millis(40));
        limits.reserve(100, 1).unwrap().commit();
    }
}
