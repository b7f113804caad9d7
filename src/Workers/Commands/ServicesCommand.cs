using System.CommandLine;
using System.Diagnostics;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate services`: runs deploy/services.sh, the one script the README and tests use too.</summary>
public static class ServicesCommand
{
    public static RootCommand AddServicesCommand(this RootCommand root)
    {
        var services = new Command("services", "Install, start, stop or inspect the local PostgreSQL and RabbitMQ");
        services.Subcommands.Add(Script("up", "Install what is missing and start PostgreSQL and RabbitMQ on 127.0.0.1 (idempotent)"));
        services.Subcommands.Add(Script("down", "Stop the PostgreSQL and RabbitMQ that `services up` started"));
        services.Subcommands.Add(Script("status", "Say whether each local service runs (exit code 3 when one is stopped)"));
        services.Subcommands.Add(Script("env", "Print the connection settings as SEMIGRATE__ variables"));
        root.Subcommands.Add(services);
        return root;
    }

    private static Command Script(string verb, string description)
    {
        var command = new Command(verb, description);
        command.SetAction(async (_, ct) =>
        {
            var script = Processes.HostBrokerUsers.Script;
            if (!File.Exists(script))
            {
                await Console.Error.WriteLineAsync($"semigrate: {script} is missing; reinstall semigrate");
                return 2;
            }
            using var process = Process.Start(new ProcessStartInfo("bash", [script, verb]) { UseShellExecute = false })
                ?? throw new InvalidOperationException("could not start bash");
            await process.WaitForExitAsync(ct);
            return process.ExitCode;
        });
        return command;
    }
}
