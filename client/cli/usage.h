// How the `dropnet` command line helps its user: the nearest command name for a misspelt one, the
// check of a command line's command words before parsing, and a bash completion script generated
// from the parser's tree of commands and options.
#ifndef DROPNET_CLIENT_CLI_USAGE_H_
#define DROPNET_CLIENT_CLI_USAGE_H_

#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace dropnet::cli {

// The Levenshtein distance between a and b.
int EditDistance(const std::string& a, const std::string& b);

// The name among `names` nearest to `word`, when it is near enough to be a likely typo.
std::optional<std::string> NearestName(const std::string& word,
                                       const std::vector<std::string>& names);

// The names of app's subcommands, in the order they were added.
std::vector<std::string> SubcommandNames(const CLI::App& app);

// Walks the command words of `args` (argv without the program name) down app's tree of
// subcommands. Returns "" when every command word names a command, else a message such as
// "unknown command 'modles' for 'dropnet', did you mean 'models'?".
std::string CheckCommandWords(const CLI::App& app, const std::vector<std::string>& args);

// The subcommand that `path` (command words, e.g. {"models", "list"}) names under app, or nullptr.
const CLI::App* FindCommand(const CLI::App& app, const std::vector<std::string>& path);

// Writes a bash completion script for `program`: its commands, subcommands and options, and file
// names after the options that take a value.
void WriteBashCompletion(const CLI::App& app, const std::string& program, std::ostream& out);

}  // namespace dropnet::cli

#endif  // DROPNET_CLIENT_CLI_USAGE_H_
