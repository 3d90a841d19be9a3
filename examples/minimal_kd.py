"""Hinton knowledge distillation on CIFAR-10 in bare PyTorch: the executable spec of leankd.

Trains a teacher with cross-entropy, then a smaller student with
    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))
and prints both test accuracies and the student's training seconds (training only:
no evaluation, device synchronised before the clock is read). Does not import leankd.

    python examples/minimal_kd.py --epochs 1 --train-limit 2000
"""
import argparse, os, time
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--data-dir", default=os.environ.get("LEANKD_DATA_DIR", "../shared/data"),
               help="folder holding cifar10/cifar10_{train,test}.npz (default: $LEANKD_DATA_DIR or ../shared/data)")
p.add_argument("--epochs", type=int, default=1, help="epochs for the teacher and for the student")
p.add_argument("--train-limit", type=int, default=5000, help="train on this many shuffled images (0: all 50k)")
p.add_argument("--batch-size", type=int, default=128, help="training batch size")
p.add_argument("--lr", type=float, default=0.05, help="peak SGD learning rate, decayed linearly to 0")
p.add_argument("--temperature", type=float, default=4.0, help="softmax temperature T for the KD term")
p.add_argument("--alpha", type=float, default=0.9, help="weight of the KD term; 1 - alpha weighs cross-entropy")
p.add_argument("--seed", type=int, default=0, help="seed for data order, augmentation and init")
args = p.parse_args()
torch.manual_seed(args.seed)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

def load(split):
    d = np.load(os.path.join(args.data_dir, "cifar10", f"cifar10_{split}.npz"))
    x = torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float().div(255)  # N,3,32,32 in [0,1]
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    return ((x - mean[:, None, None]) / std[:, None, None]).to(device), torch.from_numpy(d["labels"]).to(device)

x_train, y_train = load("train")
keep = torch.randperm(len(x_train), device=device)  # files are class-major: shuffle before the limit
keep = keep[: args.train_limit] if args.train_limit > 0 else keep
x_train, y_train = x_train[keep], y_train[keep]
x_test, y_test = load("test")

def augment(x):
    """Random 32x32 crop of the 4-px reflect-padded batch, then a random horizontal flip."""
    (n, c), dev = x.shape[:2], x.device
    padded, ar = F.pad(x, (4, 4, 4, 4), mode="reflect"), torch.arange(32, device=dev)
    rows = (torch.randint(0, 9, (n, 1), device=dev) + ar)[:, None, :, None]  # per-image offsets 0..8
    cols = (torch.randint(0, 9, (n, 1), device=dev) + ar)[:, None, None, :]
    x = padded[torch.arange(n, device=dev)[:, None, None, None], ar[:c, None, None], rows, cols]
    return torch.where(torch.rand(n, 1, 1, 1, device=dev) < 0.5, x.flip(3), x)

def cnn(w):
    """Compact VGG-style CNN: widths w, 2w, 4w; a max-pool halves the resolution after each stage."""
    block = lambda i, o: [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
    return nn.Sequential(*block(3, w), *block(w, w), nn.MaxPool2d(2), *block(w, 2 * w), nn.MaxPool2d(2),
                         *block(2 * w, 4 * w), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4 * w, 10)).to(device)

def train(model, loss_fn):
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    model.train()
    for _ in range(args.epochs):
        for idx in torch.randperm(len(x_train), device=device).split(args.batch_size):
            x, y = augment(x_train[idx]), y_train[idx]
            loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

@torch.no_grad()
def accuracy(model):
    model.eval()
    preds = torch.cat([model(x).argmax(1) for x in x_test.split(500)])
    return (preds == y_test).float().mean().item()  # .item() is a device-host sync point

def ce_loss(model, x, y):
    return F.cross_entropy(model(x), y)

def kd_loss(student, x, y):
    with torch.no_grad():  # the teacher is frozen: eval mode (set below), no graph
        t = teacher(x).float()
    s, T = student(x).float(), args.temperature  # upcast: KL on low-precision logits is noisy
    kl = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1), log_target=True, reduction="batchmean")
    return (1 - args.alpha) * F.cross_entropy(s, y) + args.alpha * T**2 * kl

teacher, student = cnn(32), cnn(16)  # 0.10M vs 0.027M params: small enough for a CPU
train(teacher, ce_loss)
teacher.eval()
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
sync(); t0 = time.perf_counter()
train(student, kd_loss)
sync(); student_seconds = time.perf_counter() - t0
n_params = lambda m: sum(p.numel() for p in m.parameters())
print(f"train images {len(x_train)}, epochs {args.epochs}, T {args.temperature}, alpha {args.alpha}, device {device}")
print(f"teacher test acc {accuracy(teacher):.4f} ({n_params(teacher) / 1e6:.2f}M params)")
print(f"student test acc {accuracy(student):.4f} ({n_params(student) / 1e6:.3f}M params)")
print(f"student training seconds {student_seconds:.1f} (measured, training only)")
