// megalodon: train, evaluate and sample Megalodon language models (tessera::models::Megalodon: CEMA,
// TimestepNorm, chunk-wise attention; unlimited context through carried state). Models are stored in the
// official layout (config.json with the official ModelConf arguments + model.safetensors with the official
// state_dict names), so the official code's checkpoints load here and ours load there.
//
//   megalodon train -c apps/megalodon/default.json -o runs/megalodon     (bytes of GCIDE by default)
//   megalodon train -c apps/megalodon/default.json -o runs/megalodon --resume
//   megalodon eval -m runs/megalodon --data text.txt [--stream]
//   megalodon generate -m runs/megalodon -p "ABANDON, v. t. " -n 200 --temp 0.7 --top-p 0.95 --seed 1
//   megalodon logits -m runs/megalodon --ids 5,17,42 --out logits.safetensors
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "commands.hpp"

int main(int argc, char** argv) {
  using namespace mglapp;
  CLI::App app{"megalodon: train, evaluate and sample Megalodon language models (tessera)"};
  app.require_subcommand(1);

  TrainArgs tr;
  tr.out = "runs/megalodon";
  auto* c_tr = app.add_subcommand("train", "train on text (bytes by default; a sentencepiece vocabulary optional)");
  c_tr->add_option("-c,--config", tr.config, "JSON config: model (official ModelConf names), data, train")
      ->required();
  c_tr->add_option("--data", tr.data, "override data.path: a text file, gzip/dictzip file or folder");
  c_tr->add_option("-o,--out", tr.out, "output folder: config.json, metrics.jsonl, step_N checkpoints, model")
      ->capture_default_str();
  c_tr->add_option("--steps", tr.steps, "override train.steps");
  c_tr->add_flag("--resume", tr.resume, "continue exactly from the latest checkpoint in --out");

  EvalArgs ev;
  auto* c_ev = app.add_subcommand("eval", "bits per byte of a model on a text file or folder");
  c_ev->add_option("-m,--model", ev.model, "model folder or training output folder")->required();
  c_ev->add_option("--data", ev.data, "text file, gzip/dictzip file or folder")->required();
  c_ev->add_option("--seq-len", ev.seq_len, "tokens per window (without --stream)")->capture_default_str();
  c_ev->add_option("--batch", ev.batch, "windows per forward (without --stream)")->capture_default_str();
  c_ev->add_option("--max-windows", ev.max_windows, "evaluate at most this many windows (0 = all)");
  c_ev->add_option("--max-bytes", ev.max_bytes, "read at most this many bytes of the text (0 = all)");
  c_ev->add_flag("--stream", ev.stream,
                 "one pass over the whole text carrying the state (unlimited context, constant memory)");

  GenerateArgs ge;
  auto* c_ge = app.add_subcommand("generate", "continue a prompt (streaming state: constant memory)");
  c_ge->add_option("-m,--model", ge.model, "model folder or training output folder")->required();
  c_ge->add_option("-p,--prompt", ge.prompt, "prompt text")->capture_default_str();
  c_ge->add_option("-n", ge.n, "tokens to generate (bytes for a byte model)")->capture_default_str();
  c_ge->add_option("--temp", ge.sampling.temperature, "temperature (0 = greedy)")->capture_default_str();
  c_ge->add_option("--top-k", ge.sampling.top_k, "sample among the k most likely tokens (0 = all)");
  c_ge->add_option("--top-p", ge.sampling.top_p, "nucleus sampling mass, in (0, 1] (1 = off)");
  c_ge->add_option("--seed", ge.sampling.seed, "sampling seed");

  LogitsArgs lo;
  auto* c_lo = app.add_subcommand("logits", "one forward over token ids (nothing prepended): logits [T,V] F32");
  c_lo->add_option("-m,--model", lo.model, "model folder or training output folder")->required();
  c_lo->add_option("--ids", lo.ids, "token ids, comma-separated (e.g. 5,17,42)")->required();
  c_lo->add_option("--out", lo.out, "output safetensors file (tensor 'logits' [T,V] F32)")->required();

  CLI11_PARSE(app, argc, argv);
  try {
    if (*c_tr) return cmd_train(tr);
    if (*c_ev) return cmd_eval(ev);
    if (*c_ge) return cmd_generate(ge);
    return cmd_logits(lo);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
