//! What every account stores, readable from any shard: the shard that owns an
//! account's partition publishes its usage after each commit that touched it (and all
//! of them when the partition opens); SMTP asks here at RCPT on whichever shard took
//! the connection. It only holds numbers: one short critical section per lookup or
//! commit, never IO, never a scan.

use std::collections::HashMap;
use std::sync::Mutex;

use super::index::{Index, Usage};

#[derive(Debug, Default)]
pub struct UsageBoard {
    accounts: Mutex<HashMap<u64, Usage>>,
}

impl UsageBoard {
    /// The account's usage as of its last durable commit (zero if it stored nothing).
    pub fn get(&self, account: u64) -> Usage {
        self.accounts
            .lock()
            .map(|a| a.get(&account).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Publishes the usage of `accounts` from their partition's index.
    pub fn publish(&self, index: &Index, accounts: impl IntoIterator<Item = u64>) {
        if let Ok(mut board) = self.accounts.lock() {
            for account in accounts {
                if let Some(acct) = index.accounts.get(&account) {
                    board.insert(account, acct.usage);
                }
            }
        }
    }
}
