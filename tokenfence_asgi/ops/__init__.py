"""Operations: metrics, webhooks, the ledger export, spend reports and the simulation."""
