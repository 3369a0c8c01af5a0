"""A pretrained vision tower + causal LM joined by mixdata's connector, as a transformers model.

`MixdataVLMForConditionalGeneration` (model type `mixdata_vlm`) holds an HF vision model
(`SiglipVisionModel`, `Siglip2VisionModel` or `CLIPVisionModel`), a connector from
`mixdata.train.connector` (pixel shuffle + MLP, or perceiver) and an HF base LM (Llama,
Qwen2, ...) with its head. Its forward reads the idefics3 family batch
(`mixdata.loading.families`): `pixel_values` [B, V, 3, T, T] with `pixel_attention_mask`,
each view's features replacing its run of `image_token_id` placeholders in token order.

Dialect: idefics3 shards tokenized with the LM's own tokenizer plus the idefics3 image
tokens (`tokenizer: {path: LM_DIR, add_tokens: true}`, an `idefics3` image preset whose tile
is a multiple of the tower's patch (position embeddings interpolate), and
`image_tokens_per_tile` = the connector's tokens per tile).

Reloading: importing this module registers the model type with `AutoConfig`, `AutoModel`
and `AutoModelForImageTextToText`, so after `import mixdata.train.hf.composed` a stage's
`final/` opens with `AutoModelForImageTextToText.from_pretrained(final)` (or
`load_composed(final)`); its `AutoProcessor` is an Idefics3Processor.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast

from ..connector import ConnectorConfig, build_connector

MODEL_TYPE = "mixdata_vlm"


class MixdataVLMConfig(PreTrainedConfig):
    """`vision_config` / `text_config`: the tower's and the LM's own configs; `connector_*`:
    `mixdata.train.connector.ConnectorConfig`; `vision_feature_layer`: the tower hidden
    state fed to the connector (-1: its output)."""

    model_type = MODEL_TYPE
    sub_configs_defaults: ClassVar[dict] = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 0
    connector_kind: str = "pixel_shuffle"
    connector_shuffle: int = 2
    connector_latents: int = 64
    connector_layers: int = 2
    connector_heads: int = 4
    vision_feature_layer: int = -1
    tie_word_embeddings: bool = False

    def connector_config(self) -> ConnectorConfig:
        return ConnectorConfig(kind=self.connector_kind, shuffle=self.connector_shuffle,
                               latents=self.connector_latents, layers=self.connector_layers,
                               heads=self.connector_heads)

    def connector_tokens(self, grid: int) -> int:
        """LM tokens per tile of `grid` x `grid` patches."""
        return self.connector_config().tokens_per_tile(grid)


class MixdataVLMPreTrainedModel(PreTrainedModel):
    config: MixdataVLMConfig
    config_class = MixdataVLMConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class MixdataVLMModel(MixdataVLMPreTrainedModel):
    def __init__(self, config: MixdataVLMConfig):
        super().__init__(config)
        self.vision_model = AutoModel.from_config(config.vision_config)
        self.connector = build_connector(config.connector_config(),
                                         config.vision_config.hidden_size,
                                         config.text_config.hidden_size)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def vision_features(self, views: torch.Tensor) -> torch.Tensor:
        """[N, 3, T, T] -> the tower's patch features [N, (T / patch)², hidden]."""
        vision = self.config.vision_config
        layer = self.config.vision_feature_layer
        kwargs = {"output_hidden_states": layer != -1}
        if vision.model_type == "siglip2_vision_model":
            kwargs.update(siglip2_inputs(views, vision.patch_size))
        else:
            kwargs.update(pixel_values=views,
                          interpolate_pos_encoding=views.shape[-1] != vision.image_size)
        out = self.vision_model(**kwargs)
        hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        if vision.model_type.startswith("clip"):
            hidden = hidden[:, 1:]  # CLIP's CLS token is no patch
        return hidden

    def get_image_features(self, pixel_values: torch.Tensor,
                           pixel_attention_mask: torch.Tensor | None = None,
                           **kwargs) -> BaseModelOutputWithPooling:
        """[B, V, 3, T, T] (padding views: all-False mask, or all zeros without a mask) ->
        `pooler_output` [views x tokens per tile, lm hidden], in view order."""
        batch, count = pixel_values.shape[:2]
        flat = pixel_values.reshape(batch * count, *pixel_values.shape[2:])
        if pixel_attention_mask is not None:
            real = pixel_attention_mask.reshape(batch * count, -1).any(-1)
        else:
            real = flat.reshape(batch * count, -1).ne(0).any(-1)
        views = flat[real].to(self.vision_model.dtype)
        hidden = self.vision_features(views)
        features = self.connector(hidden)
        return BaseModelOutputWithPooling(last_hidden_state=hidden,
                                          pooler_output=features.reshape(-1, features.shape[-1]))

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, pixel_values=None, pixel_attention_mask=None,
                use_cache=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            features = self.get_image_features(pixel_values, pixel_attention_mask).pooler_output
            mask = (input_ids == self.config.image_token_id).unsqueeze(-1)
            if int(mask.sum()) * inputs_embeds.shape[-1] != features.numel():
                raise ValueError(f"{int(mask.sum())} image tokens but {features.shape[0]} "
                                 "image features (image_tokens_per_tile mismatch?)")
            inputs_embeds = inputs_embeds.masked_scatter(mask, features.to(inputs_embeds.dtype))
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, cache=cache, use_cache=use_cache,
                                   **kwargs)


def siglip2_inputs(views: torch.Tensor, patch: int) -> dict:
    """Square views [N, 3, T, T] as Siglip2VisionModel's patch sequence (its processor's
    `convert_image_to_patches`: rows of patches, channels last within a patch)."""
    n, channels, height, width = views.shape
    rows, cols = height // patch, width // patch
    patches = views.reshape(n, channels, rows, patch, cols, patch).permute(0, 2, 4, 3, 5, 1)
    patches = patches.reshape(n, rows * cols, patch * patch * channels)
    mask = torch.ones(n, rows * cols, dtype=torch.long, device=views.device)
    shapes = torch.tensor([[rows, cols]] * n, device=views.device)
    return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}


class MixdataVLMForConditionalGeneration(MixdataVLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys: ClassVar[dict] = {
        "lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: MixdataVLMConfig):
        super().__init__(config)
        self.model = MixdataVLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size,
                                 bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def get_image_features(self, pixel_values, pixel_attention_mask=None, **kwargs):
        return self.model.get_image_features(pixel_values, pixel_attention_mask)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, pixel_values=None, pixel_attention_mask=None, labels=None,
                use_cache=None, logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        """Idefics3's forward signature; `labels` unshifted (the loss shifts them)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
                         pixel_values=pixel_values, pixel_attention_mask=pixel_attention_mask,
                         use_cache=use_cache, **kwargs)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels,
                                      vocab_size=self.config.text_config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)


AutoConfig.register(MODEL_TYPE, MixdataVLMConfig, exist_ok=True)
AutoModel.register(MixdataVLMConfig, MixdataVLMModel, exist_ok=True)
AutoModelForImageTextToText.register(MixdataVLMConfig, MixdataVLMForConditionalGeneration,
                                     exist_ok=True)


def load_composed(folder, **kwargs) -> MixdataVLMForConditionalGeneration:
    """A composed model's `save_pretrained` folder (what `final/` holds), in float32 unless
    `dtype=` says otherwise; transformers' `from_pretrained` keywords pass through."""
    kwargs.setdefault("dtype", torch.float32)
    return MixdataVLMForConditionalGeneration.from_pretrained(str(folder), **kwargs)
