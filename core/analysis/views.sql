-- SQL views over the run store: the numbers of `ttc analyze` for users of plain SQL.
-- Standard SQL (SQLite and PostgreSQL). Create them with `ttc analyze sql --create`.
-- Means are per problem; costs are mean spending per problem.

-- One row per run: accuracy of the chosen answers and the mean cost in every unit.
CREATE VIEW IF NOT EXISTS ttc_run_summary AS
SELECT r.id AS run_id, r.strategy, r.model, r.task, r.reward, r.sweep, r.status,
       COUNT(p.id) AS problems,
       AVG(CAST(CAST(p.correct AS INTEGER) AS REAL)) AS accuracy,
       AVG(p.pass_at_1) AS pass_at_1,
       AVG(CAST(CAST(p.majority_correct AS INTEGER) AS REAL)) AS majority,
       AVG(CAST(CAST(p.oracle_correct AS INTEGER) AS REAL)) AS oracle,
       AVG(CAST(p.samples AS REAL)) AS samples,
       AVG(CAST(p.tokens AS REAL)) AS tokens,
       AVG(CAST(p.prompt_tokens + p.tokens AS REAL)) AS total_tokens,
       AVG(CAST(p.prefill_tokens AS REAL)) AS prefill_tokens,
       AVG(CAST(p.reward_tokens AS REAL)) AS reward_tokens,
       AVG(p.flops) AS flops,
       AVG(p.bytes) AS bytes,
       AVG(p.seconds) AS seconds
FROM runs r JOIN results p ON p.run_id = r.id
GROUP BY r.id, r.strategy, r.model, r.task, r.reward, r.sweep, r.status;

-- One row per sample (a finished branch) with its problem's reference.
CREATE VIEW IF NOT EXISTS ttc_samples AS
SELECT p.run_id, p.problem_id, n.node_id, n.parent_id, n.answer, n.score, n.n_tokens,
       n.selected, p.reference,
       CASE WHEN n.answer IS NOT NULL AND TRIM(n.answer) = TRIM(p.reference)
            THEN 1 ELSE 0 END AS exact_match
FROM nodes n JOIN results p ON n.result_id = p.id
WHERE n.finished;

-- Per run and problem: n samples and c of them matching the reference exactly: the
-- inputs of the unbiased pass@k estimator 1 - C(n-c, k) / C(n, k). (`ttc analyze`
-- grades with the task's own rules instead, e.g. math-verify's equivalence.)
CREATE VIEW IF NOT EXISTS ttc_pass_counts AS
SELECT run_id, problem_id, COUNT(*) AS n, SUM(exact_match) AS c
FROM ttc_samples
GROUP BY run_id, problem_id;
