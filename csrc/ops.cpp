// The one place where every op's schema lives.
//
// Each op family registers its device kernels elsewhere with
// TORCH_LIBRARY_IMPL(minitorch_ext, CPU|CUDA, m); Python adds fake (meta)
// kernels and autograd (minitorch_ext/ops/*.py). Conventions:
//   * forward ops return the output plus the small statistics backward needs;
//   * backward ops are functional (they allocate their results);
//   * a gradient that does not apply (no weight, no bias) comes back as an
//     empty tensor of shape [0], which Python turns into None.
#include <torch/library.h>

TORCH_LIBRARY(minitorch_ext, m) {
  // ---- norm family: LayerNorm and RMSNorm over the trailing dims ----------
  // mean / rstd have shape [M] where M = input.numel() / prod(normalized_shape),
  // dtype float32 (float64 for float64 input).
  m.def("layer_norm_fwd(Tensor input, int[] normalized_shape, Tensor? weight, "
        "Tensor? bias, float eps) -> (Tensor output, Tensor mean, Tensor rstd)");
  m.def("layer_norm_bwd(Tensor grad_output, Tensor input, int[] normalized_shape, "
        "Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias) "
        "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  m.def("rms_norm_fwd(Tensor input, int[] normalized_shape, Tensor? weight, "
        "float eps) -> (Tensor output, Tensor rstd)");
  m.def("rms_norm_bwd(Tensor grad_output, Tensor input, int[] normalized_shape, "
        "Tensor rstd, Tensor? weight) -> (Tensor grad_input, Tensor grad_weight)");

  // ---- optim family: fused multi-tensor optimizer steps (in place) ---------
  // One call updates a whole parameter group. state_steps are float32 scalar
  // tensors (torch keeps `step` so; float64 is accepted too, as torch keeps it
  // under a float64 default dtype); each step kernel first adds 1 to them.
  // grad_scale (GradScaler's scale): grads are unscaled in place before use
  // (grad / scale, written back), and only then.
  // found_inf: when it holds a non-zero value the call changes nothing at all
  // (no parameter, state or step update), as torch's fused optimizers do.
  // lr_tensor, when given, replaces lr (torch's tensor-lr overload); with a
  // float32 lr_tensor the scalar math (lr/bc1, 1-lr*wd) is float32, as torch's
  // tensor arithmetic does it.
  // clip_total_norm (with clip_max_norm): gradient clipping folded into the
  // step. The kernel computes clip_grad_norm_'s coefficient from it exactly
  // as clip_scale_ does (below) and, unless it is 1, multiplies every grad by
  // it (after the grad_scale unscale, before anything else), rounds to the
  // grad's dtype, writes it back and steps with that value: the result is
  // bitwise what clip_scale_ followed by the step gives, one pass fewer.
  // momentum_buffers is empty when momentum == 0, max_exp_avg_sqs when
  // !amsgrad. Every per-parameter tensor has its param's dtype, shape and
  // strides. Float32/64 follow torch's default (single-tensor) op order,
  // FMAs included (see csrc/optim/optim_cpu.cpp); bfloat16 follows torch's
  // fused kernel (float32 math, one rounding per stored value).
  m.def("sgd_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, *, "
        "float lr, float momentum, float dampening, float weight_decay, bool nesterov, "
        "bool maximize, bool is_first_step, Tensor? lr_tensor=None, Tensor? grad_scale=None, "
        "Tensor? found_inf=None, Tensor? clip_total_norm=None, float clip_max_norm=0.0) -> ()");
  m.def("adam_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
        "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, *, "
        "float lr, float beta1, float beta2, float weight_decay, float eps, bool amsgrad, "
        "bool maximize, bool decoupled_weight_decay, Tensor? lr_tensor=None, "
        "Tensor? grad_scale=None, Tensor? found_inf=None, Tensor? clip_total_norm=None, "
        "float clip_max_norm=0.0) -> ()");
  // RMSprop and Adagrad, as torch.optim's single-tensor path orders them (see
  // csrc/optim/optim_cpu.cpp). grad_avgs is empty unless centered,
  // momentum_buffers empty unless momentum != 0. Steps as for adam_step_ (each
  // call adds 1; Adagrad's lr decay reads the new value).
  m.def("rmsprop_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] square_avgs, "
        "Tensor(d!)[] grad_avgs, Tensor(e!)[] momentum_buffers, Tensor(f!)[] state_steps, *, "
        "float lr, float alpha, float eps, float weight_decay, float momentum, bool centered, "
        "bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None, "
        "Tensor? clip_total_norm=None, float clip_max_norm=0.0) -> ()");
  m.def("adagrad_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] state_sums, "
        "Tensor(d!)[] state_steps, *, float lr, float lr_decay, float weight_decay, float eps, "
        "bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None, "
        "Tensor? clip_total_norm=None, float clip_max_norm=0.0) -> ()");
  // Gradient clipping: the global norm of a list of tensors (a 0-dim tensor,
  // float64 when any input is float64, else float32; norm_type 2.0, 1.0 or
  // inf, anything else a ValueError), and an in-place multiply of every tensor
  // by the clip coefficient computed from it as torch does:
  // coef = min(reciprocal(total_norm + 1e-6) * max_norm, 1) in total_norm's
  // dtype (NaN stays NaN), skipped when coef == 1.
  m.def("total_norm(Tensor[] tensors, float norm_type) -> Tensor");
  m.def("clip_scale_(Tensor(a!)[] tensors, Tensor total_norm, float max_norm) -> ()");

  // ---- dense family: the GEMM core, Linear, activations, softmax ------------
  // act names one activation, applied as an epilogue (gemm, linear_fwd) or on
  // its own (act_*): "none" | "relu" | "leaky_relu" | "gelu" | "gelu_tanh" |
  // "silu" | "tanh" | "sigmoid"; slope is leaky_relu's negative_slope (ignored
  // otherwise). csrc/common/act.h has the math, one definition for every kernel.
  //
  // gemm: out[M,N] = act(alpha * a[M,K] @ b[K,N] + beta * c + bias), in one pass
  // over the C tile. a and b may have any strides (a transposed operand is a
  // strided view: no copy); c ([M,N], any strides: the BLAS C or a residual) and
  // bias ([N] when bias_dim == 1, per column; [M] when bias_dim == 0, per row)
  // are optional. All tensors share one dtype: float32, float64 or bfloat16
  // (float16 too on CUDA); bfloat16 accumulates in float32 and rounds once on
  // store. The output is a new contiguous [M,N] tensor.
  m.def("gemm(Tensor a, Tensor b, Tensor? c=None, *, float alpha=1.0, float beta=1.0, "
        "Tensor? bias=None, int bias_dim=1, str act='none', float slope=0.01) -> Tensor");
  // linear_fwd: output[*, N] = act(input[*, K] @ weight[N, K]^T + bias[N]).
  // preact is the pre-activation ([*, N], what backward needs) when act != "none",
  // else an empty [0] tensor.
  m.def("linear_fwd(Tensor input, Tensor weight, Tensor? bias, str act, float slope) "
        "-> (Tensor output, Tensor preact)");
  // linear_bwd: g = grad_output * act'(preact) (preact unused when act == "none");
  // grad_input = g @ weight, grad_weight = g^T @ input, grad_bias = sum of g over
  // the rows (a fixed order: bitwise the same for any thread count). A result
  // whose output_mask entry is false (or grad_bias without bias) comes back as an
  // empty [0] tensor.
  m.def("linear_bwd(Tensor grad_output, Tensor input, Tensor weight, Tensor preact, "
        "str act, float slope, bool[3] output_mask) -> (Tensor grad_input, "
        "Tensor grad_weight, Tensor grad_bias)");
  // Activations, elementwise, any shape and strides (the output is contiguous
  // for act_fwd/act_bwd). act_bwd's saved is the forward input, or its output
  // when saved_is_output (allowed for relu, leaky_relu with slope >= 0, tanh and
  // sigmoid: what an in-place forward leaves). act_ works in place.
  m.def("act_fwd(Tensor input, str act, float slope) -> Tensor");
  m.def("act_bwd(Tensor grad_output, Tensor saved, str act, float slope, bool saved_is_output) -> Tensor");
  m.def("act_(Tensor(a!) self, str act, float slope) -> ()");
  // softmax / log_softmax over dim (log selects log_softmax), float32 math for
  // bfloat16/float16 (float64 for float64), output in the input's dtype;
  // backward from the forward's output.
  m.def("softmax_fwd(Tensor input, int dim, bool log) -> Tensor");
  m.def("softmax_bwd(Tensor grad_output, Tensor output, int dim, bool log) -> Tensor");

  // ---- attention family: fused scaled-dot-product attention (FlashAttention-2) ----
  // The kernels see the normalized 4-D layout; minitorch_ext/ops/attention.py
  // maps torch's sdpa arguments onto it (3-D inputs, extra batch dims, GQA checks,
  // scale=None, the dropout seed):
  //   query [B, Hq, Lq, D], key [B, Hkv, Lk, D], value [B, Hkv, Lk, Dv], any strides
  //   (a transposed B/H/L layout is only other strides: no copy); Hq % Hkv == 0 and
  //   query head h reads key/value head h / (Hq / Hkv) (GQA/MQA; Hkv == Hq is plain MHA).
  //   attn_mask: None, or [B, Hq, Lq, Lk] with any strides (a broadcast mask is an
  //   expand()ed view with stride 0: it is read, never materialised), dtype bool
  //   (true = takes part) or query's dtype (added to the scaled scores).
  //   S = scale * Q K^T + mask; is_causal keeps key j <= query i (top-left aligned,
  //   also for Lq != Lk). P = softmax(S) per row; a row with no key left (all masked,
  //   all -inf, or Lk == 0) has output 0, logsumexp +inf and zero gradients.
  //   Dropout (dropout_p > 0): element (b, h, i, j) of P is dropped iff
  //     philox4x32_10(key = (seed & 0xffffffff, seed >> 32),
  //                   counter = (n & 0xffffffff, n >> 32, 0, 0))[c & 3] < thresh,
  //     c = ((b*Hq + h)*Lq + i)*Lk + j,  n = c >> 2 (four elements per evaluation),
  //     thresh = min(floor(dropout_p * 2^32), 2^32 - 1)
  //   (minitorch_ext/_philox.py is the reference), kept ones scaled by 1/(1-p);
  //   dropout_p == 1 drops everything (output 0). The mask is regenerated in
  //   backward, never stored.
  // attention_fwd: output [B, Hq, Lq, Dv] contiguous in query's dtype; logsumexp
  //   [B, Hq, Lq] contiguous, float32 (float64 for float64 input): log sum_j exp(S_ij)
  //   over the keys that take part (+inf for an empty row). O(L) extra memory.
  // attention_bwd: the FlashAttention-2 backward from logsumexp (D = rowsum(dO*O)),
  //   grad_query/grad_key/grad_value with the shapes of query/key/value (contiguous;
  //   GQA: grad_key/grad_value summed over each key head's query heads, without
  //   atomics); grad_attn_mask [B, Hq, Lq, Lk] contiguous, the gradient of S (the
  //   caller sums it down to the mask's own shape). A result whose output_mask entry
  //   is false comes back as an empty [0] tensor. Bitwise the same run to run and for
  //   any thread count.
  // attention_weights: P itself, [B, Hq, Lq, Lk] contiguous in query's dtype, from
  //   the forward's logsumexp (no dropout; 0 on empty rows): MultiheadAttention's
  //   need_weights=True.
  m.def("attention_fwd(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, "
        "float dropout_p, bool is_causal, float scale, int seed) -> (Tensor output, Tensor logsumexp)");
  m.def("attention_bwd(Tensor grad_output, Tensor query, Tensor key, Tensor value, Tensor output, "
        "Tensor logsumexp, Tensor? attn_mask, float dropout_p, bool is_causal, float scale, int seed, "
        "bool[4] output_mask) -> (Tensor grad_query, Tensor grad_key, Tensor grad_value, "
        "Tensor grad_attn_mask)");
  m.def("attention_weights(Tensor query, Tensor key, Tensor? attn_mask, bool is_causal, float scale, "
        "Tensor logsumexp) -> Tensor");

  // ---- conv family: conv1d / conv2d (CPU: csrc/conv/conv_cpu.cpp) ----------------
  // Always 4-D inside: input [N, C, H, W] (1-D is H == 1, unbatched gets N == 1:
  // minitorch_ext/ops/conv.py reshapes), weight [O, C/groups, kH, kW], any strides.
  // stride, dilation: [sH, sW], [dH, dW]; padding: [pH, pW] (symmetric) or
  // [top, bottom, left, right] ('same' with an even kernel, F.pad-style module
  // padding); padding_mode "zeros" | "reflect" | "replicate" | "circular" is
  // applied by the kernels' packing (no padded copy). act: an activation fused into
  // the epilogue (names as for gemm; "none" for autograd use). The output is
  // channels_last when input or weight is (torch's rule), else contiguous.
  // float32, float64, bfloat16 (float32 accumulation).
  m.def("conv_fwd(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
        "int groups, str padding_mode, str act) -> Tensor");
  // conv_bwd: grad_input (the input's memory format, as the forward's output),
  // grad_weight (contiguous, weight's size), grad_bias ([O]); an entry whose
  // output_mask is false comes back as an empty [0] tensor. grad_weight and
  // grad_bias are reduced in a fixed order: bitwise the same for any thread count.
  // A batch of 0 gives zero grad_weight / grad_bias.
  m.def("conv_bwd(Tensor grad_output, Tensor input, Tensor weight, int[] stride, int[] padding, "
        "int[] dilation, int groups, str padding_mode, bool[3] output_mask) "
        "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // ---- pool family: max / avg / adaptive avg pooling over [N, C, H, W] ----
  // The kernels see 4-D inputs (minitorch_ext/ops/pool.py maps unbatched and 1-D
  // inputs onto them: 1-D pools are H = 1), any strides; the output (and indices,
  // grad_input) keep input.suggest_memory_format() (contiguous or channels_last).
  // Output sizes are torch's pooling_output_shape (ceil_mode: the last window starts
  // inside the input or its left padding); float32, float64, bfloat16 (float32 math).
  // max_pool2d_fwd: indices int64, flat ih*W+iw inside each (n, c) plane, torch's
  //   scan order and NaN rule (a NaN window gives NaN and its last NaN's index).
  // max_pool2d_bwd: grad_input[indices] += grad_output, deterministic (no atomics).
  // avg_pool2d_*: count_include_pad and divisor_override as torch (no dilation).
  // adaptive_avg_pool2d_*: windows [floor(o*H/Ho), ceil((o+1)*H/Ho)) per dim.
  m.def("max_pool2d_fwd(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> (Tensor output, Tensor indices)");
  m.def("max_pool2d_bwd(Tensor grad_output, Tensor input, Tensor indices) -> Tensor");
  m.def("avg_pool2d_fwd(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("avg_pool2d_bwd(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] stride, "
        "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d_fwd(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_bwd(Tensor grad_output, Tensor input) -> Tensor");

  // ---- bnorm family: BatchNorm / GroupNorm (InstanceNorm) over [N, C, *] -------------
  // (CPU: csrc/bnorm/bnorm_cpu.cpp.) Any rank >= 2, contiguous or channels_last (the
  // output keeps the input's format); float32, float64, bfloat16/float16 (float32 math);
  // weight/bias/running stats [C] of the input's dtype or float32.
  // batch_norm_fwd: training: batch statistics per channel (biased variance), and
  //   running_mean/running_var (when given) updated in place in the same call with the
  //   unbiased variance: r = (1 - momentum) r + momentum s. Eval: the running stats.
  //   save_mean / save_invstd [C] (float32; float64 for float64) are what it used.
  m.def("batch_norm_fwd(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, bool training, float momentum, float eps) "
        "-> (Tensor output, Tensor save_mean, Tensor save_invstd)");
  // batch_norm_bwd: grad_input, grad_weight, grad_bias (empty [0] where output_mask is
  //   false); training false treats the statistics as constants. Fixed-order reductions.
  m.def("batch_norm_bwd(Tensor grad_output, Tensor input, Tensor? weight, Tensor save_mean, "
        "Tensor save_invstd, bool training, bool[3] output_mask) "
        "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // group_norm_fwd: statistics per (sample, group of C/num_groups channels); mean, rstd
  //   [N, num_groups]. InstanceNorm is num_groups == C.
  m.def("group_norm_fwd(Tensor input, Tensor? weight, Tensor? bias, int num_groups, float eps) "
        "-> (Tensor output, Tensor mean, Tensor rstd)");
  m.def("group_norm_bwd(Tensor grad_output, Tensor input, Tensor? weight, Tensor mean, Tensor rstd, "
        "int num_groups, bool[3] output_mask) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");

  // ---- pwloss family: pointwise losses (mse, l1, smooth_l1, huber, bce, bce_logits, kl_div) ----
  // One generic op pair for all seven (kernels: csrc/loss/pwloss_cpu.cpp, pwloss_cuda.cu,
  // kernels/pwloss.py; Python side: minitorch_ext/ops/pwloss.py).
  // kind: "mse" | "l1" | "smooth_l1" (param = beta > 0) | "huber" (param = delta > 0) | "bce" |
  //   "bce_logits" | "kl_div" (log_target). reduction: 0 none, 1 mean, 2 sum, 3 batchmean
  //   (kl_div: sum / size(0), sum for a 0-d input). input, target, weight, pos_weight: one shape
  //   (Python expands broadcast operands; the kernels read expanded strides), one dtype
  //   (float32, float64, bfloat16/float16 with float32 math). weight: bce/bce_logits; pos_weight: bce_logits.
  // pwloss_fwd: the loss ('none': input's shape; else a 0-d tensor). bce: input outside [0, 1]
  //   (or NaN) is torch's RuntimeError "all elements of input should be between 0 and 1".
  // pwloss_bwd: (grad_input, grad_target); an output not asked for (need_*) is an empty [0] tensor.
  m.def("pwloss_fwd(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, str kind, float param, "
        "int reduction, bool log_target) -> Tensor");
  m.def("pwloss_bwd(Tensor grad_output, Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
        "str kind, float param, int reduction, bool log_target, bool need_input, bool need_target) "
        "-> (Tensor, Tensor)");

  // ---- dropout / embedding family (csrc/dropout/, csrc/embedding/) ----
  // dropout_fwd: y = input * keep / (1 - p), keep of element (channel) c: its Philox4x32-10
  //   word (word c % 4 of counter c / 4, key = seed; minitorch_ext/_philox.py) >= floor(p * 2^32);
  //   channel_size 1 for elementwise dropout, the spatial size for dropout1d/2d (c = the (n, c)
  //   channel index, the mask broadcast over the channel). p == 1 gives input * 0. Output contiguous.
  // dropout_fwd_: the same, written into input. dropout_bwd: the same map on grad_output (the mask
  //   regenerated from (seed, index), never stored). seed: a one-element int64 tensor (on the CPU:
  //   read on the host; a tensor, not an int, so torch.compile traces the draw without a graph break).
  // embedding_fwd: weight[indices] ([*indices.shape, D]); indices int32/int64, IndexError when out of
  //   range. padding_idx (-1: none) and scale_grad_by_freq only matter to backward.
  // embedding_bwd: the [num_weights, D] gradient, a deterministic scatter-add (counting sort of the
  //   indices; each row summed in index order by the thread that owns it; no atomics); padding_idx
  //   rows get zero; scale_grad_by_freq divides by the index's count.
  // embedding_renorm_: rows of weight referenced by indices whose norm_type-norm exceeds max_norm are
  //   scaled by max_norm / (norm + 1e-7) in place (torch's embedding_renorm_).
  m.def("dropout_fwd(Tensor input, float p, Tensor seed, int channel_size) -> Tensor");
  m.def("dropout_fwd_(Tensor(a!) input, float p, Tensor seed, int channel_size) -> ()");
  m.def("dropout_bwd(Tensor grad_output, float p, Tensor seed, int channel_size) -> Tensor");
  m.def("embedding_fwd(Tensor weight, Tensor indices, int padding_idx, bool scale_grad_by_freq) -> Tensor");
  m.def("embedding_bwd(Tensor grad_output, Tensor indices, int num_weights, int padding_idx, "
        "bool scale_grad_by_freq) -> Tensor");
  m.def("embedding_renorm_(Tensor(a!) weight, Tensor indices, float max_norm, float norm_type) -> ()");
  // ---- cross_entropy family: fused log-softmax + loss + gradient per row ----
  // input is [N, C, D] (any strides; (N, C) is D = 1, (N, C, d1, ...) has D = prod(d)),
  // classes along dim 1. target: class indices int64 [N, D], or class probabilities
  // [N, C, D] contiguous, input's dtype. weight: [C], input's dtype. reduction is torch's
  // enum (0 none, 1 mean, 2 sum). log_input: nll_loss (input holds log-probabilities:
  // no softmax, no label smoothing). Semantics are torch's cross_entropy / nll_loss:
  // mean divides by the summed target weights of the non-ignored rows (class indices)
  // or by N*D (probabilities); ignore_index rows give 0 and a zero gradient.
  // ce_fwd: loss [N, D] for 'none', [] otherwise (input's dtype); grad_input, when
  //   compute_grad, is d(loss, reduced)/d(input) as a contiguous [N, C, D] tensor (for
  //   'none' the gradient of each row's own loss), else an empty [0] tensor.
  // ce_bwd: grad_input *= grad_output in place (a scalar for mean/sum, per row for
  //   'none'): the saved gradient becomes the input's gradient without a new buffer.
  m.def("ce_fwd(Tensor input, Tensor target, Tensor? weight, int reduction, int ignore_index, "
        "float label_smoothing, bool log_input, bool compute_grad) -> (Tensor loss, Tensor grad_input)");
  m.def("ce_bwd(Tensor grad_output, Tensor(a!) grad_input, int reduction) -> ()");
}
