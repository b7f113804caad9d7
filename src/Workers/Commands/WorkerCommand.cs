using System.CommandLine;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using SEmigrate.MemoryServer;
using SEmigrate.Workers.Roles;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate worker --role R --host NAME`: the worker process of one host.</summary>
public static class WorkerCommand
{
    public static RootCommand AddWorkerCommand(this RootCommand root)
    {
        var role = new Option<string>("--role")
        {
            Description = "source: introspects and sends a VM's pages; main: takes the VM over (and runs a memory server for its share); "
                + "sub: the memory server of a sub-host; several of these at once, comma-separated (source,main), all served on the host's one queue; "
                + "orchestrator (alone): the auditor, and the resumer of embedded-engine migrations whose orchestrator died (and, with Temporal configured, the migration workflow's worker)",
            Required = true,
        };
        var host = new Option<string>("--host") { Description = "This host's name (its queues are named after it)", Required = true };
        var state = new Option<DirectoryInfo?>("--state") { Description = "Where this host keeps its state (default /opt/semigrate/hosts/NAME)" };
        var store = new Option<DirectoryInfo?>("--store") { Description = "main, sub: keep pages in files in this folder (default: in memory)" };
        var capacity = new Option<long?>("--capacity-pages") { Description = "main, sub: how many 4 KiB pages the memory server may hold (default 262144 = 1 GiB)" };
        var maxMbps = new Option<double>("--max-mbps") { Description = "source: the most its transfers may send together, in MB/s (default 0: no limit)" };
        var guests = new Option<DirectoryInfo?>("--guests") { Description = "source: the folder of its guests (made by `semigrate guest boot`), which migrations name (default STATE/guests)" };
        var command = new Command("worker", "Run this host's worker process for a role until stopped (Ctrl+C)") { role, host, state, store, capacity, maxMbps, guests };
        command.SetAction(async (parse, ct) =>
        {
            var (r, name) = (parse.GetValue(role)!, parse.GetValue(host)!);
            if (RoleRegistration.Parse(r, out var problem) is not { } roles)
            {
                await Console.Error.WriteLineAsync($"semigrate: {problem}");
                return 2;
            }
            // A host's queues are named after it, with '.' and '_' between their parts: a name holding one
            // could name another host's queue, and its broker user's permissions would reach that queue.
            if (name.Length is 0 or > 63 || !char.IsAsciiLetterOrDigit(name[0]) || name.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-')))
            {
                await Console.Error.WriteLineAsync($"semigrate: --host {name}: use letters, digits and '-' only (up to 63, a letter or digit first)");
                return 2;
            }
            // A main host holds data keys and opened pages, a source its data keys and the pages it seals:
            // their memory is locked too (a guest's memory mapped from its file is not: see PrivateMemory);
            // a sub-host holds only ciphertext.
            if (Guest.PrivateMemory.Apply(lockMemory: roles.Contains("main") || roles.Contains("source")) is { } unlocked)
            {
                await Console.Error.WriteLineAsync($"semigrate: warning: {unlocked}");
            }
            var builder = SemigrateHost.CreateBuilder();
            var overrides = new Dictionary<string, string?> { [$"{MemoryServerOptions.Section}:Host"] = name };
            if (parse.GetValue(store) is { } folder)
            {
                overrides[$"{MemoryServerOptions.Section}:StoreFolder"] = folder.FullName;
            }
            if (parse.GetValue(capacity) is { } pages)
            {
                overrides[$"{MemoryServerOptions.Section}:CapacityPages"] = pages.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }
            builder.Configuration.AddInMemoryCollection(overrides);
            // A host's own broker user reaches that host's names only: another host's would fail on every queue.
            if (Uri.TryCreate(builder.Configuration["RabbitMq:Uri"], UriKind.Absolute, out var broker)
                && Uri.UnescapeDataString(broker.UserInfo.Split(':')[0]) is var user
                && user.StartsWith(Processes.HostBrokerUsers.UserPrefix, StringComparison.Ordinal) && user != Processes.HostBrokerUsers.UserPrefix + name)
            {
                await Console.Error.WriteLineAsync($"semigrate: RabbitMq:Uri logs in as {user}, another host's broker user; host {name} logs in as {Processes.HostBrokerUsers.UserPrefix}{name} (deploy/services.sh host-user {name})");
                return 2;
            }
            builder.Services.AddOptions<MemoryServerOptions>().BindConfiguration(MemoryServerOptions.Section)
                .Validate(o => o.CapacityPages > 0, "MemoryServer:CapacityPages must be positive")
                .Validate(o => o.MaxVms is >= 1 and <= 1000, "MemoryServer:MaxVms must be 1 to 1000")
                .ValidateOnStart();
            var stateDirectory = parse.GetValue(state)?.FullName ?? Path.Combine("/opt/semigrate/hosts", name);
            Guest.PrivateByDefault.Folder(stateDirectory); // keys, stores, migrated guests' RAM and logs: root's alone
            if (parse.GetValue(maxMbps) < 0)
            {
                await Console.Error.WriteLineAsync("semigrate: --max-mbps must not be negative");
                return 2;
            }
            var evictionSetting = builder.Configuration["MainHost:Eviction"] ?? "2q";
            Activities.Eviction? eviction = evictionSetting.ToLowerInvariant() switch { "2q" => Activities.Eviction.TwoQueue, "fifo" => Activities.Eviction.Fifo, _ => null };
            if (eviction is null)
            {
                await Console.Error.WriteLineAsync($"semigrate: MainHost:Eviction is '{evictionSetting}': 2q (the default) or fifo");
                return 2;
            }
            builder.AddHostRoles(roles, new Activities.HostContext(name, stateDirectory, parse.GetValue(maxMbps), parse.GetValue(guests)?.FullName, eviction.Value));
            using var app = builder.Build();
            await app.StartAsync(ct);
            if (app.Services.GetService<MemoryServerWorker>() is { } memoryServer)
            {
                await memoryServer.Ready;
            }
            // The ready line: the demo, the tests and scripts wait for it.
            Console.WriteLine($"worker {name} ({r}) ready");
            await app.WaitForShutdownAsync(ct);
            return 0;
        });
        root.Subcommands.Add(command);
        return root;
    }
}
