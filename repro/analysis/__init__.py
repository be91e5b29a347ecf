"""Section 7 of the LoRA paper (Hu et al. 2021): is the learned update ΔW really low-rank, and how does it relate
to the pretrained W?

* `linalg`   -- the math on plain arrays: φ(A1, A2, i, j) (Eq. 4, right-singular vectors of A), spectra and energy,
                Table 7's ‖U_rᵀ W V_r‖_F and the amplification factor.
* `factors`  -- LoRA factors (A, B, alpha/r) from a runner checkpoint (`<cell>/seed<k>.safetensors` + metadata) or
                from a model in memory, and the pretrained W they adapt (GPT-2: the q / v blocks of c_attn).
* `figures`  -- heatmaps in the style of Figures 3/4/6/7, spectra plots.
* `report`   -- all of it for one table's cells (r=8 vs r=64, two seeds): PNG + markdown + JSON.
* `ablation` -- Tables 5 and 6 from the records of conf/table/which_weights.yaml and rank.yaml.

Command line: `python -m repro.analyze {report,subspace,spectrum,amplification,ablation} ...`.
"""
