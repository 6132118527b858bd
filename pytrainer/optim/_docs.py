"""Docstring fragments shared by pytrainer's optimizers (as torch.optim's
``_params_doc``, ``_maximize_doc``...), so each argument is described once."""

_params_doc = r"""params (iterable): iterable of parameters to optimize or of dicts defining
            parameter groups"""

_lr_doc = r"""lr (float or Tensor, optional): learning rate: a number, or a one-element
            tensor on the CPU or on the parameters' device, which a scheduler can update
            in place without a host synchronisation"""

_betas_doc = r"""betas (Tuple[float, float], optional): coefficients of the running averages
            of the gradient and of its square, each in [0, 1) (default: (0.9, 0.999))"""

_eps_doc = r"""eps (float, optional): term added to the denominator for numerical
            stability, > 0 (default: 1e-8)"""

_weight_decay_doc = r"""weight_decay (float, optional): decoupled weight decay coefficient, >= 0"""

_maximize_doc = r"""maximize (bool, optional): maximize the objective with respect to the
            params, instead of minimizing (default: False)"""

_kernels_doc = r"""All parameters of a group with a gradient are updated by a single kernel
    call on their device (CPU: vectorised and multi-threaded; CUDA: launches that read
    the tensors of each dtype from one table). Under ``torch.amp.GradScaler`` the
    kernels unscale the gradients and skip a step with inf/NaN gradients on the
    device, without a host synchronisation."""

_capturable_doc = r"""capturable (bool, optional): whether a step may be captured in a CUDA
            graph and replayed, as ``torch.optim.AdamW(capturable=True)``: the step
            counts, ``lr`` when it is a tensor on the parameters' device, and the
            GradScaler's scale and inf flag are read on the device at every replay,
            and the step counts advance inside the graph (a float ``lr`` is fixed
            in the graph when captured). Run one eager step before the capture (it
            builds the tables the graph reads); then the graph stays valid only while
            the group's params, grads and states are the same tensors: new params,
            grads set to None and recreated (zero them in place with
            ``zero_grad(set_to_none=False)``) or a state reload need a new capture,
            and the optimizer must outlive the graph. A capture the eager step did
            not prepare for raises an error, and so does capturing a step with
            ``capturable=False``. Unlike torch, ``capturable=True`` is also accepted on
            the CPU, where nothing is captured and the step is the same (default: False)"""
