"""Vision-tower FLOPs against an independent count: torch's FlopCounterMode over a real
forward (and backward) of the bundled ViT, a transformers SigLIP and a CLIP tower."""
import pytest
import torch
from test_train_model import tiny_config
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mixdata.train.config import StageTrain, Trainable
from mixdata.train.flops import ViTShape, vit_flops, vit_view_flops
from mixdata.train.metrics import flop_model, vit_shape
from mixdata.train.model import VLM
from mixdata.train.optim import apply_modes
from mixdata.train.vision import VisionConfig, VisionEncoder


def counted(module, pixels, *, backward: bool) -> int:
    """FLOPs FlopCounterMode sees. SDPA goes through its math path, which is plain batched
    matmuls: the fused CPU kernel has no FLOP formula registered, so it would count 0."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = module(pixels)
        out = getattr(out, "last_hidden_state", out)
        if backward:
            out.float().sum().backward()
    return counter.get_total_flops()


VIT = VisionConfig(patch=4, base_tile=16, dim=32, layers=3, heads=2, mlp_ratio=3.0)


@pytest.mark.parametrize("tile", [16, 24])   # the base grid and a resized one
def test_bundled_vit_forward_is_counted_exactly(tile):
    torch.manual_seed(0)
    encoder = VisionEncoder(VIT).requires_grad_(False)
    pixels = torch.randn(3, 3, tile, tile)
    expected = 3 * vit_view_flops(vit_shape(VIT), tile, trains_weights=False, grads_flow=False)
    assert counted(encoder, pixels, backward=False) == expected


def test_bundled_vit_training_step_is_counted_exactly():
    torch.manual_seed(0)
    encoder = VisionEncoder(VIT)
    pixels = torch.randn(2, 3, 16, 16)        # pixels need no gradient: the conv has none
    expected = 2 * vit_view_flops(vit_shape(VIT), 16, trains_weights=True, grads_flow=True)
    assert counted(encoder, pixels, backward=True) == expected


def test_the_vlm_flop_model_uses_the_exact_vision_count():
    config = tiny_config()
    model = VLM(config)
    apply_modes(model, StageTrain(), seed=0)
    full = flop_model(model)
    shape = vit_shape(config.vision)
    assert full.vision_adapter_params == 0
    vision_only = full.step_flops(views=5, tile=16, doc_lengths_sq=0, tokens=0) \
        - 5 * full.connector.tokens_per_tile(4) * full.connector_factor * full.connector_params
    assert vision_only == 5 * vit_view_flops(shape, 16, trains_weights=True, grads_flow=True)
    lora = VLM(config)
    apply_modes(lora, StageTrain(trainable=Trainable(vision="lora")), seed=0)
    adapted = flop_model(lora)
    adapters = sum(p.numel() for n, p in lora.vision.named_parameters() if "lora" in n)
    assert adapted.vision_adapter_params == adapters > 0
    assert (adapted.vision_trains, adapted.vision_flows) == (False, True)


def siglip(vision_use_head=False):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                                num_attention_heads=2, image_size=32, patch_size=8,
                                vision_use_head=vision_use_head)
    return config, SiglipVisionModel(config)


@pytest.mark.parametrize("backward", [False, True])
def test_siglip_tower_from_its_hf_config(backward):
    torch.manual_seed(0)
    config, model = siglip()
    model.requires_grad_(backward)
    pixels = torch.randn(2, 3, 32, 32)
    expected = 2 * vit_flops(hidden_size=config.hidden_size,
                             num_layers=config.num_hidden_layers, patch_size=config.patch_size,
                             intermediate_size=config.intermediate_size,
                             image_size=config.image_size, trains_weights=backward,
                             grads_flow=backward)
    assert counted(model, pixels, backward=backward) == expected
    assert ViTShape.from_hf(config) == ViTShape(hidden_size=32, num_layers=2, patch_size=8,
                                                intermediate_size=80)


def test_clip_tower_counts_its_class_token():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=24, patch_size=8)
    model = CLIPVisionModel(config).requires_grad_(False)
    shape = ViTShape.from_hf(config, extra_tokens=1)
    expected = vit_view_flops(shape, 24, trains_weights=False, grads_flow=False)
    assert counted(model, torch.randn(1, 3, 24, 24), backward=False) == expected


def test_image_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        vit_view_flops(ViTShape.from_hf(siglip()[0]), 30, trains_weights=False, grads_flow=False)
