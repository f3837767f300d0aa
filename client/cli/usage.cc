#include "client/cli/usage.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <sstream>

namespace dropnet::cli {
namespace {

std::vector<const CLI::App*> Subcommands(const CLI::App& app) {
  return app.get_subcommands([](const CLI::App*) { return true; });
}

// The option `token` ("--server", "--server=x", "-o", "-ojson") names on app or, through
// fallthrough, on one of its parents; nullptr when none does.
const CLI::Option* FindOption(const CLI::App& app, const std::string& token) {
  std::string name = token;
  if (name.rfind("--", 0) == 0) {
    name = name.substr(0, name.find('='));
  } else if (name.size() > 2) {
    name = name.substr(0, 2);
  }
  for (const CLI::App* a = &app; a != nullptr; a = a->get_parent()) {
    if (const CLI::Option* o = a->get_option_no_throw(name)) return o;
  }
  return nullptr;
}

// Does `token` (an option) consume the next word as its value?
bool TakesNextWord(const CLI::App& app, const std::string& token) {
  const CLI::Option* o = FindOption(app, token);
  if (o == nullptr || o->get_items_expected_max() == 0) return false;
  if (token.rfind("--", 0) == 0) return token.find('=') == std::string::npos;
  return token.size() == 2;  // -o json, not -ojson
}

std::string CommandPath(const CLI::App& app) {
  std::string path;
  for (const CLI::App* a = &app; a != nullptr; a = a->get_parent()) {
    const std::string name = a->get_parent() == nullptr ? "dropnet" : a->get_name();
    path = path.empty() ? name : name + " " + path;
  }
  return path;
}

std::string OptionNames(const CLI::App& app, bool with_values_only) {
  std::vector<std::string> names;
  for (const CLI::Option* o : app.get_options()) {
    if (!o->nonpositional()) continue;
    if (with_values_only && o->get_items_expected_max() == 0) continue;
    for (const auto& l : o->get_lnames()) names.push_back("--" + l);
    for (const auto& s : o->get_snames()) names.push_back("-" + s);
  }
  std::string joined;
  for (const auto& n : names) joined += (joined.empty() ? "" : " ") + n;
  return joined;
}

void WalkForCompletion(const CLI::App& app, const std::string& path, const std::string& global,
                       std::ostream& cases, std::set<std::string>& value_options) {
  std::string words;
  for (const CLI::App* s : Subcommands(app)) words += s->get_name() + " ";
  const bool top = app.get_parent() == nullptr;
  words += OptionNames(app, false);
  if (!top) words += " " + global;
  cases << "    \"" << path << "\") words=\"" << words << "\" ;;\n";
  std::istringstream values(OptionNames(app, true));
  for (std::string v; values >> v;) value_options.insert(v);
  for (const CLI::App* s : Subcommands(app)) {
    WalkForCompletion(*s, path + " " + s->get_name(), global, cases, value_options);
  }
}

}  // namespace

int EditDistance(const std::string& a, const std::string& b) {
  std::vector<int> row(b.size() + 1);
  std::iota(row.begin(), row.end(), 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    int diagonal = row[0];
    row[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::optional<std::string> NearestName(const std::string& word,
                                       const std::vector<std::string>& names) {
  std::optional<std::string> best;
  int best_distance = 0;
  for (const auto& n : names) {
    const int d = EditDistance(word, n);
    if (!best || d < best_distance) {
      best = n;
      best_distance = d;
    }
  }
  // As git does: a suggestion only for a near miss, never for an unrelated word.
  const int limit = std::max<int>(1, static_cast<int>(std::min(word.size(), size_t{6})) / 2);
  if (!best || best_distance > limit) return std::nullopt;
  return best;
}

std::vector<std::string> SubcommandNames(const CLI::App& app) {
  std::vector<std::string> names;
  for (const CLI::App* s : Subcommands(app)) names.push_back(s->get_name());
  return names;
}

std::string CheckCommandWords(const CLI::App& app, const std::vector<std::string>& args) {
  const CLI::App* current = &app;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& w = args[i];
    if (w == "--") return "";
    if (w.size() > 1 && w[0] == '-') {
      if (TakesNextWord(*current, w)) ++i;
      continue;
    }
    const auto names = SubcommandNames(*current);
    if (names.empty()) return "";  // a leaf command's arguments
    if (std::find(names.begin(), names.end(), w) != names.end()) {
      current = FindCommand(*current, {w});
      continue;
    }
    std::string message = "unknown command '" + w + "'";
    if (current->get_parent() != nullptr) message += " for '" + CommandPath(*current) + "'";
    if (auto near = NearestName(w, names)) message += ", did you mean '" + *near + "'?";
    return message;
  }
  return "";
}

const CLI::App* FindCommand(const CLI::App& app, const std::vector<std::string>& path) {
  const CLI::App* current = &app;
  for (const auto& name : path) {
    const CLI::App* next = nullptr;
    for (const CLI::App* s : Subcommands(*current)) {
      if (s->get_name() == name) next = s;
    }
    if (next == nullptr) return nullptr;
    current = next;
  }
  return current;
}

void WriteBashCompletion(const CLI::App& app, const std::string& program, std::ostream& out) {
  std::ostringstream cases;
  std::set<std::string> value_options;
  WalkForCompletion(app, "", OptionNames(app, false), cases, value_options);
  std::string values;
  for (const auto& v : value_options) values += (values.empty() ? "" : "|") + v;
  std::string fn = "_" + program;
  std::replace(fn.begin(), fn.end(), '-', '_');

  out << "# bash completion for " << program << ": source <(" << program << " completion bash)\n"
      << fn << "() {\n"
      << "  local cur=\"${COMP_WORDS[COMP_CWORD]}\" prev=\"${COMP_WORDS[COMP_CWORD-1]}\"\n"
      << "  local path=\"\" words=\"\" i w\n"
      << "  case \"$prev\" in\n"
      << "    " << values << ")\n"
      << "      COMPREPLY=($(compgen -f -- \"$cur\"))\n"
      << "      return 0 ;;\n"
      << "  esac\n"
      << "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
      << "    w=\"${COMP_WORDS[i]}\"\n"
      << "    [[ \"$w\" == -* ]] && continue\n"
      << "    case \"$path $w\" in\n";
  // Every command path is a case of its own, so a word that names no command is skipped.
  std::istringstream lines(cases.str());
  for (std::string line; std::getline(lines, line);) {
    const auto open = line.find('"'), close = line.find('"', open + 1);
    const std::string path = line.substr(open + 1, close - open - 1);
    if (!path.empty()) out << "      \"" << path << "\") path=\"$path $w\" ;;\n";
  }
  out << "    esac\n"
      << "  done\n"
      << "  case \"$path\" in\n"
      << cases.str() << "  esac\n"
      << "  COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
      << "}\n"
      << "complete -o default -F " << fn << " " << program << "\n";
}

}  // namespace dropnet::cli
