"""Mixture of experts (chapter 06): a router picks k of E feed-forward experts for each token,
so the parameters grow with E while the work per token grows with k.

- :mod:`.router`  the linear router: softmax then top-k (Switch, GShard, Mixtral) or top-k then
                  softmax, noisy top-k (Shazeer 2017), the capacity limit and dropped tokens
- :mod:`.losses`  the load-balancing loss (Switch: E * sum_i f_i P_i) and the router z-loss
                  (ST-MoE)
- :mod:`.layer`   the experts (SwiGLU FFNs, stored stacked as Mixtral stores them) and the MoE
                  layer, with shared experts (DeepSeekMoE) and three ways to run the experts:
                  every expert on every token (``dense``, the reference), one expert at a
                  time (``loop``), sorted by expert and one grouped matmul (``grouped``)
- :mod:`.model`   a LLaMA whose FFNs are MoE layers, its training loss with the auxiliary
                  losses, parameter counts (total and active), and the copy of an MoE layer
                  into transformers' ``MixtralSparseMoeBlock``
- :mod:`.scale`   published MoE models (GLaM, Switch, Mixtral, DeepSeek-V3) counted from their
                  configurations (equal to transformers' to the parameter), FLOPs per token,
                  and expert parallelism's all-to-all, computed and run on CPU processes (gloo)

Import from the module: ``from llmlab.moe.router import TopKRouter``.
"""
