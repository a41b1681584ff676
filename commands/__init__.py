"""Commands: the main job and the command-line entry points, the one layer that wires every other.

`imagegen-main` (`main_job`), `imagegen-generate` / `imagegen-assemble` (`pipeline_cli`),
`imagegen-evaluate` (`evaluate`), `imagegen-push` (`push`). Training stays with its stage:
`accelerate launch -m stage1_tokenizer.train ...` / `-m stage2_prior.train ...`.
"""
