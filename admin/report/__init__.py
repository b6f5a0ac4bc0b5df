"""The weekly optimisation report (docs/design.md §14): figures from the ledger (`build`),
their wire shape (`model`), their SQL (`sql`) and the Markdown form (`markdown`)."""
