# SPDX-License-Identifier: MIT
# xcheck_e8p.py: an independent numpy construction of the E8P12 codebook from algorithms.md 3.1
# (as a set: {F * a' +- 1/4}, F even sign flips), its statistics, and brute-force E8P 2-bit MSE
# on N(0,1) weights with the scale rms(W)/1.03. Cross-check only; the C tests do not need it.
#   python3 quantizers/e8/xcheck_e8p.py
import itertools, numpy as np
v=np.array(list(itertools.product([.5,1.5,2.5,3.5],repeat=8)))
d8=v[(v**2).sum(1)<=10]                    # lexicographic already (product order)
halves="123 023 013 012 367 357 347 356 346 345 267 257 247 256 246 245 167 157 147 156 146 045 067 057 047 056 046 014 237".split()
n12=[]
for h in halves:
    a=np.full(8,1.5); a[[int(c) for c in h]]=0.5; n12.append(a)
absg=np.vstack([d8,np.array(n12)])
assert absg.shape==(256,8)
# codebook: {F*a' + t}: a' has coord 7 negated if sum odd; F even sign flips; t=+-1/4
ap=absg.copy(); odd=(absg.sum(1)%2==1); ap[odd,7]*=-1
flips=np.array([[(1-2*((m>>i)&1)) for i in range(8)] for m in range(256) if bin(m).count('1')%2==0])
cb=(ap[:,None,:]*flips[None,:,:]).reshape(-1,8)
cb=np.vstack([cb+0.25,cb-0.25]).astype(np.float64)
assert cb.shape==(65536,8) and len(np.unique(cb,axis=0))==65536
print("mean sq coord", (cb**2).mean(), "max norm2", (cb**2).sum(1).max(), "max abs", np.abs(cb).max())
rng=np.random.default_rng(0)
W=rng.standard_normal((16384,8))
s=np.sqrt((W**2).mean())/1.03
X=W/s
cn=(cb**2).sum(1)
per=[]
for i in range(0,len(X),2048):
    x=X[i:i+2048]
    d=cn[None,:]-2*x@cb.T
    q=cb[d.argmin(1)]
    per.append(((x-q)**2).mean(1)*s*s)
per=np.concatenate(per)
print("E8P 2-bit MSE per weight (W units): %.5f +- %.5f (standard error)" % (per.mean(), per.std()/np.sqrt(len(per))))
# packed abs form: permute by [0,2,4,6,1,3,5,7], negate coordinate 7 when the sum is odd,
# nibble 2v+8 (the check values of algorithms.md 3.1 are 0x99999999 0x59999999 0xd9999999 0x7999b999)
pk = absg[:, [0, 2, 4, 6, 1, 3, 5, 7]].copy()
pk[odd, 7] *= -1
words = [sum(int(2 * pk[j, k] + 8) << (4 * k) for k in range(8)) for j in range(256)]
print("packed abs[0..3]:", " ".join("0x%08x" % w for w in words[:4]))
