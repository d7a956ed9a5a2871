/* layout.c: prints the layout of every public struct and the value of every
 * public constant, one fact a line, for scripts/check-abi.sh to compare with
 * the committed tests/abi/libmha.abi. A struct with a leading struct_size
 * may grow at its end (mha.h, "ABI"), so only its fields are listed; a
 * fixed struct lists its size too, and any change to it breaks the ABI. */
#include <stddef.h>
#include <stdio.h>

#include "mha.h"
#include "mha_vulkan.h"

#define FIELD(type, field)                                                   \
    printf("field %s.%s offset %zu size %zu\n", #type, #field,              \
           offsetof(type, field), sizeof(((type *)0)->field))
#define FIXED(type) printf("struct %s size %zu\n", #type, sizeof(type))
#define CONST(name) printf("const %s %lld\n", #name, (long long)(name))

static void grows(void)
{
    FIELD(mha_context_options, struct_size);
    FIELD(mha_context_options, allocator);
    FIELD(mha_context_options, log);
    FIELD(mha_context_options, log_user);
    FIELD(mha_context_options, log_level);
    FIELD(mha_context_options, backends);
    FIELD(mha_device_options, struct_size);
    FIELD(mha_device_options, threads);
    FIELD(mha_device_options, cpu_isa);
    FIELD(mha_device_options, cache_dir);
    FIELD(mha_layer_config, struct_size);
    FIELD(mha_layer_config, embed_dim);
    FIELD(mha_layer_config, num_heads);
    FIELD(mha_layer_config, dropout);
    FIELD(mha_layer_config, bias);
    FIELD(mha_layer_config, add_bias_kv);
    FIELD(mha_layer_config, add_zero_attn);
    FIELD(mha_layer_config, kdim);
    FIELD(mha_layer_config, vdim);
    FIELD(mha_layer_config, batch_first);
    FIELD(mha_layer_config, dtype);
    FIELD(mha_forward_args, struct_size);
    FIELD(mha_forward_args, query);
    FIELD(mha_forward_args, key);
    FIELD(mha_forward_args, value);
    FIELD(mha_forward_args, key_padding_mask);
    FIELD(mha_forward_args, attn_mask);
    FIELD(mha_forward_args, is_causal);
    FIELD(mha_forward_args, need_weights);
    FIELD(mha_forward_args, average_attn_weights);
    FIELD(mha_forward_args, output);
    FIELD(mha_forward_args, weights);
    FIELD(mha_forward_args, head_gates);
    FIELD(mha_forward_args, head_outputs);
    FIELD(mha_forward_args, save_for_backward);
    FIELD(mha_backward_args, struct_size);
    FIELD(mha_backward_args, grad_output);
    FIELD(mha_backward_args, grad_query);
    FIELD(mha_backward_args, grad_key);
    FIELD(mha_backward_args, grad_value);
    FIELD(mha_backward_args, grads);
    FIELD(mha_backward_args, accumulate);
    FIELD(mha_backward_args, grad_head_gates);
    FIELD(mha_adamw_config, struct_size);
    FIELD(mha_adamw_config, beta1);
    FIELD(mha_adamw_config, beta2);
    FIELD(mha_adamw_config, eps);
    FIELD(mha_adamw_config, weight_decay);
    FIELD(mha_host_forward_args, struct_size);
    FIELD(mha_host_forward_args, query);
    FIELD(mha_host_forward_args, key);
    FIELD(mha_host_forward_args, value);
    FIELD(mha_host_forward_args, key_padding_mask);
    FIELD(mha_host_forward_args, attn_mask);
    FIELD(mha_host_forward_args, is_causal);
    FIELD(mha_host_forward_args, need_weights);
    FIELD(mha_host_forward_args, average_attn_weights);
    FIELD(mha_host_forward_args, output);
    FIELD(mha_host_forward_args, output_count);
    FIELD(mha_host_forward_args, weights);
    FIELD(mha_host_forward_args, weights_count);
    FIELD(mha_attention_args, struct_size);
    FIELD(mha_attention_args, q);
    FIELD(mha_attention_args, k);
    FIELD(mha_attention_args, v);
    FIELD(mha_attention_args, out);
    FIELD(mha_attention_args, layout);
    FIELD(mha_attention_args, scale);
    FIELD(mha_attention_args, causal);
    FIELD(mha_attention_args, window);
    FIELD(mha_attention_args, softcap);
    FIELD(mha_attention_args, alibi);
    FIELD(mha_attention_args, alibi_slopes);
    FIELD(mha_attention_args, sinks);
    FIELD(mha_attention_args, bias);
    FIELD(mha_attention_args, kv_lens);
    FIELD(mha_vulkan_device_info, struct_size);
    FIELD(mha_vulkan_device_info, instance);
    FIELD(mha_vulkan_device_info, physical_device);
    FIELD(mha_vulkan_device_info, device);
    FIELD(mha_vulkan_device_info, queue_family_index);
    FIELD(mha_vulkan_device_info, queue);
    FIELD(mha_vulkan_device_info, get_instance_proc_addr);
    FIELD(mha_vulkan_device_info, get_device_proc_addr);
    FIELD(mha_vulkan_device_info, api_version);
    FIELD(mha_vulkan_device_info, enabled_extensions);
    FIELD(mha_vulkan_device_info, enabled_extension_count);
    FIELD(mha_vulkan_device_info, enabled_features);
    FIELD(mha_vulkan_buffer, struct_size);
    FIELD(mha_vulkan_buffer, buffer);
    FIELD(mha_vulkan_buffer, offset);
    FIELD(mha_vulkan_buffer, range);
    FIELD(mha_vulkan_buffer, usage);
    FIELD(mha_kv_cache_config, struct_size);
    FIELD(mha_kv_cache_config, capacity);
    FIELD(mha_kv_cache_config, num_sequences);
    FIELD(mha_kv_cache_config, num_kv_heads);
    FIELD(mha_kv_cache_config, head_dim);
    FIELD(mha_kv_cache_config, dtype);
    FIELD(mha_kv_cache_config, window);
    FIELD(mha_decoder_config, struct_size);
    FIELD(mha_decoder_config, embed_dim);
    FIELD(mha_decoder_config, num_heads);
    FIELD(mha_decoder_config, num_kv_heads);
    FIELD(mha_decoder_config, head_dim);
    FIELD(mha_decoder_config, rope_style);
    FIELD(mha_decoder_config, rope_dims);
    FIELD(mha_decoder_config, rope_theta);
    FIELD(mha_decoder_config, rope_scaling);
    FIELD(mha_decoder_config, window);
    FIELD(mha_decoder_config, alibi);
    FIELD(mha_decoder_config, softcap);
    FIELD(mha_decoder_config, sinks);
    FIELD(mha_decoder_config, qkv_bias);
    FIELD(mha_decoder_config, o_bias);
    FIELD(mha_decoder_config, scale);
    FIELD(mha_decoder_forward_args, struct_size);
    FIELD(mha_decoder_forward_args, x);
    FIELD(mha_decoder_forward_args, positions);
    FIELD(mha_decoder_forward_args, cache);
    FIELD(mha_decoder_forward_args, output);
    FIELD(mha_decoder_forward_args, head_gates);
    FIELD(mha_decoder_forward_args, save_for_backward);
    FIELD(mha_decoder_backward_args, struct_size);
    FIELD(mha_decoder_backward_args, grad_output);
    FIELD(mha_decoder_backward_args, grad_x);
    FIELD(mha_decoder_backward_args, grads);
    FIELD(mha_decoder_backward_args, accumulate);
    FIELD(mha_decoder_backward_args, grad_head_gates);
}

static void fixed(void)
{
    FIXED(mha_allocator);
    FIELD(mha_allocator, malloc);
    FIELD(mha_allocator, free);
    FIELD(mha_allocator, user);
    FIXED(mha_host_array);
    FIELD(mha_host_array, data);
    FIELD(mha_host_array, dtype);
    FIELD(mha_host_array, ndim);
    FIELD(mha_host_array, shape);
    FIXED(mha_device_info);
    FIELD(mha_device_info, backend);
    FIELD(mha_device_info, backend_index);
    FIELD(mha_device_info, index);
    FIELD(mha_device_info, kind);
    FIELD(mha_device_info, vendor);
    FIELD(mha_device_info, name);
    FIELD(mha_device_info, driver);
    FIELD(mha_device_info, memory_bytes);
    FIELD(mha_device_info, max_buffer_bytes);
    FIELD(mha_device_info, features);
    FIELD(mha_device_info, compute_units);
    FIELD(mha_device_info, max_workgroup_size);
    FIELD(mha_device_info, shared_memory_bytes);
    FIELD(mha_device_info, subgroup_size);
    FIELD(mha_device_info, score);
    FIELD(mha_device_info, is_default);
    FIELD(mha_device_info, details);
    FIXED(mha_head_stat);
    FIELD(mha_head_stat, head);
    FIELD(mha_head_stat, entropy);
    FIELD(mha_head_stat, confidence);
    FIELD(mha_head_stat, distance);
    FIELD(mha_head_stat, first_key);
    FIELD(mha_head_stat, prev_token);
    FIELD(mha_head_stat, ablation);
    FIELD(mha_head_stat, gradient);
    FIELD(mha_head_stat, gradient_raw);
    FIELD(mha_head_stat, rows);
    FIELD(mha_head_stat, gradient_items);
    FIXED(mha_profile_entry);
    FIELD(mha_profile_entry, op);
    FIELD(mha_profile_entry, ms);
    FIELD(mha_profile_entry, device_clock);
    FIELD(mha_profile_entry, variant);
}

static void constants(void)
{
#define STATUS_(name, text) CONST(MHA_##name);
    MHA_STATUS_LIST(STATUS_)
#undef STATUS_
    CONST(MHA_F32);
    CONST(MHA_F16);
    CONST(MHA_BOOL);
    CONST(MHA_I32);
    CONST(MHA_MAX_DIMS);
    CONST(MHA_LOG_ERROR);
    CONST(MHA_LOG_WARN);
    CONST(MHA_LOG_INFO);
    CONST(MHA_LOG_DEBUG);
    CONST(MHA_DEVICE_DISCRETE_GPU);
    CONST(MHA_DEVICE_INTEGRATED_GPU);
    CONST(MHA_DEVICE_VIRTUAL_GPU);
    CONST(MHA_DEVICE_CPU);
    CONST(MHA_DEVICE_SOFTWARE);
    CONST(MHA_DEVICE_OTHER);
    CONST(MHA_FEATURE_FP16_STORAGE);
    CONST(MHA_FEATURE_FP16_MATH);
    CONST(MHA_FEATURE_SUBGROUPS);
    CONST(MHA_FEATURE_FUSED_ATTENTION);
    CONST(MHA_FEATURE_AVX2);
    CONST(MHA_FEATURE_NEON);
    CONST(MHA_FEATURE_AVX512);
    CONST(MHA_ROPE_NONE);
    CONST(MHA_ROPE_NEOX);
    CONST(MHA_ROPE_GPTJ);
    CONST(MHA_LAYOUT_BTHD);
    CONST(MHA_LAYOUT_BHTD);
    CONST(MHA_CAUSAL_NONE);
    CONST(MHA_CAUSAL_TOP_LEFT);
    CONST(MHA_CAUSAL_BOTTOM_RIGHT);
    CONST(MHA_REDUNDANCY_JS);
    CONST(MHA_REDUNDANCY_COSINE);
}

int main(void)
{
    grows();
    fixed();
    constants();
    return 0;
}
