//! openraft's storage test suite against the RocksDB log store and state
//! machine (real RocksDB in a temporary directory per case).

use billdb_node::store::{LogStore, StateMachine, open_db};
use billdb_node::types::TypeConfig;
use openraft::StorageError;
use openraft::errors::ErrorSource;
use openraft::testing::log::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::read(ErrorSource::from_error(&e)))?;
        let db = open_db(&dir.path().join("db"))
            .map_err(|e| StorageError::read(ErrorSource::from_error(&e)))?;
        let log = LogStore::new(db.clone(), None)
            .map_err(|e| StorageError::read(ErrorSource::from_error(&e)))?;
        let sm = StateMachine::open(db, dir.path().join("snapshots"))
            .map_err(|e| StorageError::read(ErrorSource::from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(Builder).await?;
    Ok(())
}
