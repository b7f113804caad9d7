using System.CommandLine;
using Microsoft.Extensions.Configuration;
using SEmigrate.Workers.Settings;
using SEmigrate.Workers.Temporal;
using Temporalio.Client;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate temporal setup`: prepares the configured Temporal namespace for migrations.</summary>
public static class TemporalCommand
{
    public static RootCommand AddTemporalCommand(this RootCommand root)
    {
        var setup = new Command("setup", "Register the migration workflow's search attributes (SemigrateVm, SemigrateSource, SemigrateMain, SemigrateMode, "
            + "SemigrateState, as Keyword) on the namespace of Temporal:Address; what is there already is left alone");
        setup.SetAction(async (_, ct) =>
        {
            var temporal = SemigrateHost.CreateBuilder().Configuration.GetSection(TemporalOptions.Section).Get<TemporalOptions>() ?? new TemporalOptions();
            if (!temporal.IsConfigured)
            {
                await Console.Error.WriteLineAsync("semigrate: Temporal:Address is not set (SEMIGRATE__Temporal__Address): the embedded engine needs no setup");
                return 2;
            }
            try
            {
                var client = await TemporalClient.ConnectAsync(temporal.ConnectOptions());
                var added = await SearchAttributeSetup.AddMissingAsync(client, ct);
                Console.WriteLine(added.Count == 0
                    ? $"namespace {temporal.Namespace} at {temporal.Address}: every search attribute is registered already"
                    : $"namespace {temporal.Namespace} at {temporal.Address}: registered {string.Join(", ", added)}");
                return 0;
            }
            catch (Exception e) when (e is InvalidOperationException or Temporalio.Exceptions.RpcException)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 1;
            }
        });
        root.Subcommands.Add(new Command("temporal", "Temporal, when a server is used (Temporal:Address)") { setup });
        return root;
    }
}
