//! The DynamoDB projection offset store, with exactly-once transactions: one item per
//! projection id in the journal table, written with conditional requests on its version;
//! a [`DynamoDbTransaction`] holds the handler's `TransactWriteItem`s, and
//! [`OffsetStore::commit_transaction`] sends them with the offset's conditional `Put` in
//! one `TransactWriteItems`, so the effects are stored only with their offset, and never
//! for a projection whose offset another instance moved on.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use persistence_api::{
    version_conflict, Error, ErrorKind, Offset, OffsetStore, ProjectionId, Result,
    StoreTransaction, StoredOffset,
};

use crate::core::{now_ms, Inner};
use crate::error::{build_error, Class};
use crate::schema::{
    decode_offset, get_str, get_u64, key, n, offset_item, offset_version, s, Item, COMMIT_ID,
    MAX_TX_ITEMS, OFFSET, TIMESTAMP, VERSION,
};
use crate::DynamoDb;

/// The cancellation code of a transaction item whose condition failed.
const CONDITION_FAILED: &str = "ConditionalCheckFailed";

/// The most items a handler can add to one transaction: DynamoDB's 100 actions per
/// `TransactWriteItems`, less the offset's own `Put`.
pub const MAX_TRANSACTION_ITEMS: usize = MAX_TX_ITEMS - 1;

/// The DynamoDB backend's transaction: the writes an exactly-once handler wants stored
/// (puts, updates, deletes, condition checks on any table of the same account and
/// region), sent in one `TransactWriteItems` with the projection's offset when (and only
/// when) the offset commits. At most [`MAX_TRANSACTION_ITEMS`] items (DynamoDB's 100 with
/// the offset); the items must not touch the same item twice, nor the offset's item.
///
/// ```no_run
/// # async fn demo(stores: persistence_api::Stores) -> persistence_api::Result<()> {
/// use persistence_api::{Offset, ProjectionId};
/// use persistence_dynamodb::aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
/// use persistence_dynamodb::DynamoDbTransaction;
/// let id = ProjectionId::new("balances", "all")?;
/// let stored = stores.offsets.read_offset(&id).await?;
/// let expected = stored.map_or(0, |s| s.version);
///
/// let mut tx = stores.offsets.begin_transaction().await?;
/// let put = Put::builder()
///     .table_name("balances")
///     .item("account", AttributeValue::S("a-1".into()))
///     .item("balance", AttributeValue::N("42".into()))
///     .build()
///     .expect("table and item are set");
/// DynamoDbTransaction::of(&mut tx)?.push(TransactWriteItem::builder().put(put).build());
/// // The balance and the offset are stored together, or neither is.
/// stores.offsets.commit_transaction(tx, &id, expected, Offset::Sequence(7)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Default, Clone)]
pub struct DynamoDbTransaction {
    items: Vec<TransactWriteItem>,
}

impl DynamoDbTransaction {
    /// The DynamoDB transaction inside `transaction`.
    ///
    /// # Errors
    /// `ErrorKind::InvalidInput` when another backend opened it.
    pub fn of(transaction: &mut StoreTransaction) -> Result<&mut DynamoDbTransaction> {
        transaction.downcast_mut::<DynamoDbTransaction>()
    }

    /// Adds a write, sent when the transaction commits. Its index in the error of a
    /// cancelled transaction is its position here, from 0.
    pub fn push(&mut self, item: TransactWriteItem) {
        self.items.push(item);
    }

    /// The writes added so far.
    pub fn items(&self) -> &[TransactWriteItem] {
        &self.items
    }

    /// How many writes were added.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no write was added.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The DynamoDB offset store (what [`DynamoDb::stores`] puts in
/// [`persistence_api::Stores::offsets`]): one item per projection id in the journal table,
/// under the namespace's key prefix (see the README's table layout).
#[derive(Clone)]
pub struct DynamoDbOffsetStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for DynamoDbOffsetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbOffsetStore")
            .field("table", &self.inner.journal_table())
            .field("namespace", &self.inner.config.namespace)
            .finish()
    }
}

impl DynamoDbOffsetStore {
    fn offset_key(&self, id: &ProjectionId) -> Item {
        key(self.inner.keys.offset_pk(id.name()), id.key().to_owned())
    }

    /// The offset item `commit_offset` and `commit_transaction` write: version
    /// `expected + 1`, stamped with this commit's id.
    fn new_item(&self, id: &ProjectionId, offset: &Offset, expected: u64, commit_id: &str) -> Item {
        offset_item(
            &self.inner.keys,
            id,
            offset,
            expected + 1,
            commit_id,
            now_ms(),
        )
    }

    /// The stored offset item of `id`, read strongly consistently.
    async fn read_item(&self, operation: &'static str, id: &ProjectionId) -> Result<Option<Item>> {
        self.inner.get_item(operation, self.offset_key(id)).await
    }

    /// After a commit's condition failed: the stored item (`old`, as DynamoDB returned it,
    /// else read now) is either this very commit's, written by an earlier attempt whose
    /// answer was lost (success), or another one (a version conflict naming its version).
    async fn conflict(
        &self,
        operation: &'static str,
        id: &ProjectionId,
        expected: u64,
        commit_id: &str,
        old: Option<Item>,
    ) -> Result<u64> {
        let stored = match old {
            Some(item) => Some(item),
            // The item is absent (a commit over a version never stored), or the server
            // does not return it: look.
            None => self.read_item(operation, id).await?,
        };
        if stored
            .as_ref()
            .is_some_and(|i| get_str(i, COMMIT_ID) == commit_id)
        {
            return Ok(expected + 1);
        }
        Err(
            version_conflict(id, expected, offset_version(stored.as_ref()))
                .with_operation(operation),
        )
    }
}

/// The condition of a commit over version `expected`, and the value it names (none for 0:
/// DynamoDB refuses values an expression does not use).
fn commit_condition(expected: u64) -> (&'static str, Option<HashMap<String, AttributeValue>>) {
    if expected == 0 {
        ("attribute_not_exists(pk)", None)
    } else {
        (
            "v = :expected",
            Some(HashMap::from([(":expected".to_owned(), n(expected))])),
        )
    }
}

#[async_trait]
impl OffsetStore for DynamoDbOffsetStore {
    async fn read_offset(&self, id: &ProjectionId) -> Result<Option<StoredOffset>> {
        self.read_item("read_offset", id)
            .await?
            .map(|item| decode_offset(id, &item))
            .transpose()
    }

    async fn commit_offset(&self, id: &ProjectionId, expected: u64, offset: Offset) -> Result<u64> {
        let commit_id = uuid::Uuid::new_v4().to_string();
        let (condition, values) = commit_condition(expected);
        let req = self
            .inner
            .client
            .put_item()
            .table_name(self.inner.journal_table())
            .set_item(Some(self.new_item(id, &offset, expected, &commit_id)))
            .condition_expression(condition)
            .set_expression_attribute_values(values)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        match self
            .inner
            .retry
            .run("commit_offset", || req.clone().send())
            .await
        {
            Ok(_) => Ok(expected + 1),
            Err(f) if f.class == Class::Conflict => {
                let old = match f.err.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(e)) => e.item().cloned(),
                    _ => None,
                };
                self.conflict("commit_offset", id, expected, &commit_id, old)
                    .await
            }
            Err(f) => Err(f.into_error()),
        }
    }

    async fn set_offset(&self, id: &ProjectionId, offset: Offset) -> Result<u64> {
        let commit_id = uuid::Uuid::new_v4().to_string();
        // Unconditional, but for its own id: a retry whose earlier attempt was applied
        // must not move the version on twice.
        let req = self
            .inner
            .client
            .update_item()
            .table_name(self.inner.journal_table())
            .set_key(Some(self.offset_key(id)))
            .update_expression(format!(
                "SET {OFFSET} = :offset, {TIMESTAMP} = :now, {COMMIT_ID} = :commit ADD {VERSION} :one"
            ))
            .condition_expression(format!(
                "attribute_not_exists({COMMIT_ID}) OR {COMMIT_ID} <> :commit"
            ))
            .expression_attribute_values(":offset", s(offset.to_string()))
            .expression_attribute_values(":now", n(now_ms()))
            .expression_attribute_values(":commit", s(commit_id.clone()))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew);
        let attributes = match self
            .inner
            .retry
            .run("set_offset", || req.clone().send())
            .await
        {
            Ok(out) => out.attributes,
            // Only an earlier attempt of this very request can have set this commit id.
            Err(f) if f.class == Class::Conflict && f.ambiguous => {
                self.read_item("set_offset", id).await?
            }
            Err(f) => return Err(f.into_error()),
        };
        attributes
            .as_ref()
            .and_then(|a| get_u64(a, VERSION))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unexpected,
                    format!("projection {id}: DynamoDB did not return the new offset version"),
                )
            })
    }

    fn supports_transactions(&self) -> bool {
        true
    }

    async fn begin_transaction(&self) -> Result<StoreTransaction> {
        Ok(StoreTransaction::new(
            DynamoDb::NAME,
            DynamoDbTransaction::default(),
        ))
    }

    async fn commit_transaction(
        &self,
        transaction: StoreTransaction,
        id: &ProjectionId,
        expected: u64,
        offset: Offset,
    ) -> Result<u64> {
        let transaction = transaction.into_inner::<DynamoDbTransaction>()?;
        let count = transaction.len();
        if count > MAX_TRANSACTION_ITEMS {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "projection {id}: the handler added {count} items to the transaction; DynamoDB takes at most {MAX_TX_ITEMS} items in one transaction, so a handler at most {MAX_TRANSACTION_ITEMS} beside the offset"
                ),
            ));
        }
        if transaction.is_empty() {
            // Nothing to store with the offset: one conditional PutItem costs half the
            // write units of a transaction.
            return self.commit_offset(id, expected, offset).await;
        }
        // The commit id is the request token too: DynamoDB applies a retried transaction
        // with the same token once, and the offset item records it.
        let commit_id = uuid::Uuid::new_v4().to_string();
        let (condition, values) = commit_condition(expected);
        let put = Put::builder()
            .table_name(self.inner.journal_table())
            .set_item(Some(self.new_item(id, &offset, expected, &commit_id)))
            .condition_expression(condition)
            .set_expression_attribute_values(values)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_error)?;
        let mut items = transaction.items;
        items.push(TransactWriteItem::builder().put(put).build());
        let req = self
            .inner
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .client_request_token(commit_id.clone());
        let f = match self
            .inner
            .retry
            .run("commit_transaction", || req.clone().send())
            .await
        {
            Ok(_) => return Ok(expected + 1),
            Err(f) => f,
        };
        let reasons = match f.err.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
                e.cancellation_reasons().to_vec()
            }
            _ => Vec::new(),
        };
        // The reasons are in item order; the offset's is the last.
        if reasons.get(count).and_then(|r| r.code()) == Some(CONDITION_FAILED) {
            let old = reasons[count].item().cloned();
            return self
                .conflict("commit_transaction", id, expected, &commit_id, old)
                .await;
        }
        let refused = reasons
            .iter()
            .take(count)
            .enumerate()
            .find_map(|(i, r)| r.code().filter(|c| *c != "None").map(|c| (i, c)));
        match refused {
            // Throttling and collisions were retried already; what is left is the
            // handler's own: a condition of its items, or an invalid item.
            Some((index, code)) if matches!(f.class, Class::Conflict | Class::Validation) => {
                let kind = if code == CONDITION_FAILED {
                    ErrorKind::Conflict
                } else {
                    ErrorKind::Rejected
                };
                let code = code.to_owned();
                Err(Error::new(
                    kind,
                    format!(
                        "projection {id}: DynamoDB cancelled the transaction because of the handler's item {index} (of {count}): {code}; nothing of it is stored and the offset did not move"
                    ),
                )
                .with_source(f.err))
            }
            _ => Err(f.into_error()),
        }
    }
}
