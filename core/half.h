/* half.h: IEEE binary16 and bfloat16 conversions on the host, for fp16
 * weights and for loading F16/BF16 safetensors. */
#ifndef MHA_CORE_HALF_H
#define MHA_CORE_HALF_H

#include <stdint.h>

uint16_t mha_f32_to_f16(float value); /* round to nearest even */
float mha_f16_to_f32(uint16_t bits);
float mha_bf16_to_f32(uint16_t bits);

#endif
