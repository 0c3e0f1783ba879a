"""Records -> prompt -> verdict -> grade. Uses engine/ for tokens and generation; knows nothing of
files, the model store or runs.

  rubrics.py, records.py       what a record is; one mapping -> a Record or a RelativeRecord
  prompts.py, chat_template.py prompt profiles; the chat frame
  prompt_tokens.py             record -> prompt ids (record text is plain text, never control tokens)
  verdict_text.py              finding a verdict in output text: scores, winners, the feedback before it
  verdict_tokens.py            which token ids begin each label; the marker that forces a verdict
  verdicts.py                  the one verdict reader: a VerdictStyle (scores or pairs) on a model
  grades.py                    the rows: Grade, RelativeGrade, error_row, from_row/kind_of
  kinds.py, pairwise.py        one Grader per kind of record: absolute (samples), pairwise (both orders)
  samples.py                   several samples of one record -> one row; sampling protocols
  backend.py                   the Backend protocol; RowStream (input order, written once)
  judge.py                     the Judge facade (a Backend on a local engine)
  prometheus_eval_calls.py     prometheus-eval's absolute_grade / relative_grade on a Judge
"""
