"""D-only check (from the train engineer's /tmp/trainwork/donly.py): can a PatchGAN tell real FD from real LD patches?

Usage: donly.py LR NDF LAYERS NORM(batch|instance|none) SCALE MANIFEST PATCHES_PER_SLICE
"""
import torch, time, sys
from pathlib import Path
from ldct_monai.train_config import TrainConfig
from ldct_monai.data import UnpairedBatches, split_records
from ldct_monai.networks import make_discriminator
from monai.losses import PatchAdversarialLoss
torch.set_num_threads(1)
man = Path(sys.argv[6])
recs = split_records(man,'train_ld','ld','low'), split_records(man,'train_fd','fd','full')
lr = float(sys.argv[1]); ndf = int(sys.argv[2]); layers = int(sys.argv[3])
cfg = TrainConfig.from_preset('cpu-small', manifest=str(man), out='/tmp/x', patches_per_slice=int(sys.argv[7]))
b = UnpairedBatches(cfg, *recs)
torch.manual_seed(0)
norm = None if sys.argv[4] == "none" else sys.argv[4]; scale = float(sys.argv[5])
d = make_discriminator(1, ndf, layers, norm)
opt = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.999))
adv = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
step = 0; t = time.time()
for ep in range(20):
    for ld, fd, *_ in b.epoch(ep):
        # "real" = FD, "fake" = LD : can D tell noise levels apart?
        out = d(scale * torch.cat([fd, ld]))[-1]
        loss = 0.5 * (adv(out[:fd.shape[0]], True, True) + adv(out[fd.shape[0]:], False, True))
        opt.zero_grad(); loss.backward(); opt.step(); step += 1
        if step % 25 == 0:
            print(step, f"{loss.item():.4f}", f"{time.time()-t:.0f}s", flush=True)
        if step >= 150: raise SystemExit
