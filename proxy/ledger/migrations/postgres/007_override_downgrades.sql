-- Over-budget downgrade per override (docs/design.md §13): a budget override's own
-- `downgrade_to` table, a JSON object of model glob -> cheaper model, for its tenant or user.
-- NULL (every row before this migration) keeps the configured `[budget.downgrade_to]`; `{}`
-- means no downgrade for that tenant or user. The sidecar validates it when it reads the
-- overrides (a value that is not an object of non-empty strings is logged and ignored).
ALTER TABLE budget_overrides ADD COLUMN IF NOT EXISTS downgrade_to jsonb;
