"""Efficiency benchmarks for the paper's claims (issue 8): `python -m repro.bench latency|train|storage`.

latency  -- Table 1: one forward pass of GPT-2 medium, base vs merged/unmerged LoRA vs AdapterL/AdapterH
train    -- step time and peak memory of every method (roberta-base, gpt2-medium), LoRA vs FT, ours vs PEFT
storage  -- checkpoint bytes per method and task-switch time (merge a LoRA adapter vs load a full checkpoint)
decode   -- our beam search (gpt2_beam.py) vs transformers' generate, same settings: outputs and time per input
serve    -- a mixed-task batch (one LoRA per example, unmerged) vs one merged forward per task (repro.serve)
sweep    -- cells per hour of a CPU grid: one cell at a time on every core vs two cells at a time on one core each
roofline -- matmul rates at each model's shapes, the block roofline, training steps (reference vs train.fast_path)
            and decoding as fractions of it (issue 27)

Each writes results/bench/<what>.json (machine, load average, settings, raw samples) and prints a table.
"""

BENCHMARKS = ("latency", "train", "storage", "decode", "serve", "sweep", "roofline")
