// blt: train, evaluate, sample and inspect Byte Latent Transformers (tessera::blt) — the entropy model, the
// BLT on top of it, generation, patching plots and raw logits. Checkpoints use the Hugging Face transformers
// layout (config.json + model.safetensors), so the published tiny fixture and BltForCausalLM.from_pretrained
// folders work both ways.
//
//   blt train-entropy -c apps/blt/entropy.json -o runs/entropy
//   blt train -c apps/blt/blt.json -o runs/blt                  (blt.json names runs/entropy)
//   blt eval -m runs/blt --data text.txt
//   blt train -c apps/blt/blt.json -o runs/blt --device cuda [--precision bf16]   (also train-entropy, eval,
//                                                                                  generate)
//   blt generate -m runs/blt -p "The " -n 200 --temp 0.8 --top-p 0.95
//   blt patch -m runs/blt --text "Daenerys Targaryen is in Game of Thrones" --png patches.png
//   blt logits -m runs/blt --ids-hex 48656c6c6f --out logits.safetensors
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "commands.hpp"

int main(int argc, char** argv) {
  using namespace bltapp;
  CLI::App app{"blt: train, evaluate, sample and inspect Byte Latent Transformers (tessera)"};
  app.require_subcommand(1);

  // --device and --precision on train, train-entropy, eval, generate.
  auto add_device = [](CLI::App* c, std::string& device) {
    c->add_option("--device", device, "where to run: cpu, or cuda (an NVIDIA GPU; needs a CUDA build)")
        ->check(CLI::IsMember({"cpu", "cuda"}))
        ->capture_default_str();
  };
  auto add_precision = [](CLI::App* c, std::string& precision, bool inference = false) {
    c->add_option("--precision", precision,
                  inference ? "compute precision: fp32, or bf16 (cuda: mixed precision; cpu: bf16 weights, "
                              "fp32 activations and sums)"
                            : "compute precision: fp32, or bf16 (mixed precision with fp32 master weights; "
                              "--device cuda)")
        ->check(CLI::IsMember({"fp32", "bf16"}))
        ->capture_default_str();
  };

  TrainArgs te, tr;
  te.out = "runs/entropy";
  tr.out = "runs/blt";
  auto add_train = [&](const char* name, const char* help, TrainArgs& a) {
    auto* c = app.add_subcommand(name, help);
    c->add_option("-c,--config", a.config, "JSON config (model, data, train sections)")->required();
    c->add_option("--data", a.data, "override data.path: a text file, gzip/dictzip file or folder");
    c->add_option("-o,--out", a.out, "output folder: config.json, metrics.jsonl, step_N checkpoints, model")
        ->capture_default_str();
    c->add_option("--steps", a.steps, "override train.steps");
    c->add_flag("--resume", a.resume,
                "continue exactly from the latest checkpoint in --out (on either device)");
    add_device(c, a.device);
    add_precision(c, a.precision);
    return c;
  };
  auto* c_te = add_train("train-entropy", "train the entropy model (a byte LM with a 512-byte window)", te);
  auto* c_tr =
      add_train("train", "train a BLT on top of a trained entropy model (config field entropy_model)", tr);

  EvalArgs ev;
  auto* c_ev = app.add_subcommand("eval", "bits per byte of a BLT (or entropy model) on text");
  c_ev->add_option("-m,--model", ev.model, "model folder or training output folder")->required();
  c_ev->add_option("--data", ev.data, "text file, gzip/dictzip file or folder")->required();
  c_ev->add_option("--seq-len", ev.seq_len, "bytes per window (each window starts with BOS)")
      ->capture_default_str();
  c_ev->add_option("--batch", ev.batch, "windows per forward")->capture_default_str();
  c_ev->add_option("--max-windows", ev.max_windows, "evaluate at most this many windows (0 = all)");
  add_device(c_ev, ev.device);
  add_precision(c_ev, ev.precision, true);

  GenerateArgs ge;
  std::string prompt, prompt_hex;
  auto* c_ge = app.add_subcommand("generate", "continue a prompt (BOS is prepended)");
  c_ge->add_option("-m,--model", ge.model, "model folder or training output folder")->required();
  auto* o_p = c_ge->add_option("-p,--prompt", prompt, "prompt text");
  auto* o_ph = c_ge->add_option("--prompt-hex", prompt_hex, "prompt bytes as hex");
  o_p->excludes(o_ph);
  c_ge->add_option("-n", ge.n, "bytes to generate")->capture_default_str();
  c_ge->add_option("--temp", ge.temp, "temperature (0 = greedy)")->capture_default_str();
  c_ge->add_option("--top-k", ge.top_k, "sample among the k most likely bytes (0 = all)");
  c_ge->add_option("--top-p", ge.top_p, "nucleus sampling mass (0 or 1 = off)");
  c_ge->add_option("--seed", ge.seed, "sampling seed");
  c_ge->add_flag("--ignore-eos", ge.ignore_eos, "keep generating after an EOS");
  c_ge->add_flag("--no-cache", ge.no_cache,
                 "re-patch and run a full forward per byte (the reference's path)");
  c_ge->add_option("--ids-out", ge.ids_out, "write the generated token ids (not the prompt's) to this file");
  add_device(c_ge, ge.device);
  add_precision(c_ge, ge.precision, true);

  PatchArgs pa;
  std::string text, file;
  auto* c_pa = app.add_subcommand("patch", "show the entropy patches of a text");
  c_pa->add_option("-m,--model", pa.model, "model folder or training output folder")->required();
  auto* o_t = c_pa->add_option("--text", text, "text to patch");
  auto* o_f = c_pa->add_option("--file", file, "file to patch");
  o_t->excludes(o_f);
  c_pa->add_option("--png", pa.png, "write a plot of the entropies, threshold and patch boundaries");

  LogitsArgs lo;
  auto* c_lo = app.add_subcommand("logits", "one forward over bytes: logits, entropies, patch lengths");
  c_lo->add_option("-m,--model", lo.model, "model folder or training output folder")->required();
  c_lo->add_option("--ids-hex", lo.ids_hex, "input bytes as hex (BOS is prepended)")->required();
  c_lo->add_option("--out", lo.out,
                   "output safetensors: logits [T,260] F32, entropies [T] F32, patch_lengths [P] I64")
      ->required();

  CLI11_PARSE(app, argc, argv);
  try {
    if (*c_te) return cmd_train_entropy(te);
    if (*c_tr) return cmd_train(tr);
    if (*c_ev) return cmd_eval(ev);
    if (*c_ge) {
      if (*o_p) ge.prompt = prompt;
      if (*o_ph) ge.prompt_hex = prompt_hex;
      return cmd_generate(ge);
    }
    if (*c_pa) {
      if (*o_t) pa.text = text;
      if (*o_f) pa.file = file;
      return cmd_patch(pa);
    }
    return cmd_logits(lo);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
